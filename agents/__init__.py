"""Controllers and how they learn (CMA-ES in the dream, RLlib), judged in the real env."""
