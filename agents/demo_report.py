"""The demo's report: report.md, one section a function, and its HTML page (Python-Markdown)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agents.demo import DemoConfig


def render_report(out: Path, record: dict, config: DemoConfig) -> str:
    """report.md: one section a function, in the order a reader wants them."""
    stages = record["stages"]
    sections = [
        _title_section(config),
        _scores_section(stages, config),
        _pictures_section(),
        _heldout_section(stages["train"]["eval_model"]),
        _service_section(stages["serve"]),
        _data_section(out),
        _timing_section(stages),
        _scaling_section(config),
    ]
    return "\n".join(line for section in sections for line in [*section, ""])


def _title_section(config: DemoConfig) -> list[str]:
    return [
        f"# worldmodel demo: {config.env_id}",
        "",
        "A controller evolved only inside the learned dream, judged in the real environment on held-out tracks.",
    ]


def _scores_section(stages: dict, config: DemoConfig) -> list[str]:
    scores = stages["evaluate"]["scores"]
    lines = [
        "## Scores in the real environment",
        "",
        f"Held-out episodes with seeds {scores['random']['seeds'][0]}..{scores['random']['seeds'][-1]}, at most "
        f"{config.eval_max_steps} steps each (demo seed {config.seed}).",
        "",
        "| policy | mean return | std | per episode |",
        "| --- | ---: | ---: | --- |",
    ]
    rounds = len(stages.get("loop", {}).get("rounds", []))
    labels = {
        "controller": f"C, trained in the dream ({rounds} loop rounds)" if rounds else "C, trained only in the dream",
        "controller_before_loop": "C, trained in the dream, before the loop",
        "random": "random",
    }
    for policy, label in labels.items():
        if policy in scores:
            s = scores[policy]
            lines.append(f"| {label} | {s['mean']:.2f} | {s['std']:.2f} | {', '.join(f'{x:.1f}' for x in s['returns'])} |")
    controller = stages["controller"]
    lines += [
        "",
        f"Best return in the dream: {controller['best_dream_return']:.2f} ({controller['generations']} CMA-ES generations).",
    ]
    return lines + _loop_lines(stages.get("loop", {}).get("rounds", []))


def _loop_lines(rounds: list[dict]) -> list[str]:
    if not rounds:
        return []
    lines = ["", "Each loop round collected real episodes with C, fine-tuned V and M and evolved C again:", "",
             "| round | real return | dream return | gap | episodes in the store |", "| ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['round']:.0f} | {r['real_return']:.1f} | {r['dream_return']:.1f} | {r['gap']:.1f} | "
              f"{r['episodes_in_store']:.0f} |" for r in rounds]
    return lines + ["", "![rounds](loop/rounds.png)"]


def _pictures_section() -> list[str]:
    return [
        "## Pictures",
        "",
        "Real (left) and the V-M-C dream (right) from the same start and the same actions:",
        "",
        "![real vs dream](real_vs_dream.gif)",
        "",
        "One real episode of C (left) beside the frame the model expected next (right):",
        "",
        "![real vs prediction](real_vs_prediction.gif)",
        "",
        "Real frames (left) and V's reconstructions (right):",
        "",
        "![reconstruction](vae_reconstruction.gif)",
        "",
        "Loss curves: ![V](vae/loss.png) ![M](mdnrnn/loss.png) ![CMA-ES](cmaes/cmaes.png)",
    ]


def _heldout_section(fidelity: dict) -> list[str]:
    return [
        "## The models on held-out episodes",
        "",
        "| metric | model | trivial baseline |",
        "| --- | ---: | ---: |",
        f"| V reconstruction MSE / pixel | {fidelity['v_mse']:.5f} | {fidelity['v_mse_mean_frame']:.5f} (mean frame) |",
        f"| M next-z NLL | {fidelity['m_nll']:.3f} | {fidelity['m_nll_copy']:.3f} (copy z_t) |",
        f"| M reward MSE | {fidelity['reward_mse']:.5f} | {fidelity['reward_mse_mean']:.5f} (mean reward) |",
        f"| M termination accuracy | {fidelity['termination_accuracy']:.4f} | {fidelity['termination_accuracy_never']:.4f} (never ends) |",
    ]


def _service_section(serve: dict) -> list[str]:
    return [
        "## The service",
        "",
        f"`worldmodel serve` on {serve['address']}: one remote episode of {serve['steps']} steps through "
        f"`worldmodel/Remote-v0` ({serve['steps_per_second']:.0f} steps/s, dream return {serve['dream_return']:.2f}); "
        f"the server drained and exited with code {serve['server_exit_code']} on SIGTERM.",
    ]


def _data_section(out: Path) -> list[str]:
    from worldmodel.data import EpisodeStore
    from worldmodel.data.summary import format_summary, summarize

    return ["## The data", "", "```", format_summary(summarize(EpisodeStore.open(str(out / "store.zarr")))), "```"]


def _timing_section(stages: dict) -> list[str]:
    lines = ["## Time per stage", "", "| stage | seconds |", "| --- | ---: |"]
    lines += [f"| {name} | {info['seconds']:.1f} |" for name, info in stages.items()]
    return lines + [f"| total | {sum(info['seconds'] for info in stages.values()):.1f} |"]


def _scaling_section(config: DemoConfig) -> list[str]:
    submit = "RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 -- \\"
    return [
        "## Scaling each stage up",
        "",
        "```bash",
        f"worldmodel collect --env {config.env_id} --episodes 10000 --max-steps 1000 --workers 64 --out s3://bucket/store.zarr",
        submit,
        "    worldmodel train vae --store s3://bucket/store.zarr --out /shared/runs/vae --preset paper --workers 8 --gpus-per-worker 1",
        submit,
        "    worldmodel train mdnrnn --store s3://bucket/store.zarr --vae /shared/runs/vae --out /shared/runs/mdnrnn --preset paper --workers 8 --gpus-per-worker 1",
        "worldmodel bundle --vae /shared/runs/vae --mdnrnn /shared/runs/mdnrnn --store s3://bucket/store.zarr --out /shared/bundle",
        "worldmodel train controller --bundle /shared/bundle --out /shared/runs/cmaes --preset paper --workers 32",
        "worldmodel train loop --store s3://bucket/store.zarr --bundle /shared/bundle --rounds 10 --out /shared/runs/loop --workers 32",
        "worldmodel train controller --in real --bundle /shared/bundle --out /shared/runs/cmaes-real --preset paper --workers 64",
        "worldmodel eval --bundle /shared/bundle --episodes 100 --out /shared/runs/eval",
        "worldmodel serve carracing=/shared/bundle --port 50051",
        "```",
    ]


PAGE_STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px}img{max-width:100%;image-rendering:pixelated}pre{background:#f4f4f4;padding:1em}"
)


def markdown_page(text: str, title: str) -> str:
    """A self-contained HTML page of the report: Python-Markdown with its tables and fenced_code extensions."""
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code"])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{PAGE_STYLE}</style></head><body>\n{body}\n</body></html>\n")


__all__ = ["markdown_page", "render_report"]
