"""The command line: a user's mistake is one line and exit status 2, a bug keeps its traceback, and
every trainer takes the same shared flags. Nothing here trains or starts Ray."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from worldmodel.cli import build_parser, main


def _one_line_error(capsys, argv: list[str], prog: str) -> str:
    """Run argv; assert exit status 2 and exactly one stderr line `PROG: error: ...`; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


def test_user_mistakes_are_one_line(capsys, tmp_path):
    missing = str(tmp_path / "missing")
    assert "not a worldmodel episode store" in _one_line_error(capsys, ["info", missing], "worldmodel info")
    line = _one_line_error(capsys, ["collect", "--env", "NoSuchEnv-v0", "--episodes", "1", "--out", missing],
                           "worldmodel collect")
    assert "--env NoSuchEnv-v0" in line
    line = _one_line_error(capsys, ["collect", "--env", "CartPole-v1", "--episodes", "1", "--policy", "greedy",
                                    "--out", missing], "worldmodel collect")
    assert "greedy" in line and "random-walk" in line
    assert "no bundle at" in _one_line_error(capsys, ["play", "--bundle", missing], "worldmodel play")
    assert "needs --rllib" in _one_line_error(capsys, ["eval", "--bundle", missing, "--policy", "rllib"], "worldmodel eval")
    assert "nothing to bundle" in _one_line_error(capsys, ["bundle", "--store", missing, "--out", missing], "worldmodel bundle")
    line = _one_line_error(capsys, ["train", "rllib", "--bundle", missing, "--out", missing], "worldmodel train rllib")
    assert "is not a bundle" in line or "no bundle" in line
    line = _one_line_error(capsys, ["serve", f"a={missing}", f"a={missing}", "--port", "0"], "worldmodel serve")
    assert "two models are named 'a'" in line
    assert "TLS needs both" in _one_line_error(capsys, ["serve", missing, "--tls-cert", missing], "worldmodel serve")


def test_a_busy_port_is_one_line(capsys, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = _one_line_error(capsys, ["serve", str(tmp_path), "--port", str(port)], "worldmodel serve")
    assert f"cannot serve on 127.0.0.1:{port}" in line


@pytest.mark.parametrize("argv", [
    ["collect", "--env", "CartPole-v1", "--episodes", "0", "--out", "x"],
    ["play", "--bundle", "x", "--backend", "dreamer"],
    ["play", "--bundle", "x", "--temperature", "0"],
    ["serve", "x", "--port", "70000"],
    ["train", "vae", "--store", "s", "--out", "o", "--preset", "huge"],
    ["train", "controller", "--bundle", "b", "--out", "o", "--seed", "-1"],
])
def test_bad_flag_values_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err and "Traceback" not in err


def test_an_internal_bug_keeps_its_traceback(monkeypatch, tmp_path):
    import worldmodel.cli.data

    def broken(location: str, as_json: bool) -> None:
        raise ValueError("an internal bug")

    monkeypatch.setattr(worldmodel.cli.data, "print_store_summary", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["info", str(tmp_path)])


@pytest.mark.parametrize("trainer, extra, length_flag", [
    ("vae", ["--store", "s"], "--max-steps"),
    ("mdnrnn", ["--store", "s", "--vae", "v"], "--max-steps"),
    ("diffusion", ["--store", "s"], "--max-steps"),
    ("controller", ["--bundle", "b"], "--generations"),
    ("rllib", ["--bundle", "b"], "--iterations"),
])
def test_every_trainer_takes_the_shared_flags(trainer, extra, length_flag):
    shared = ["--out", "o", "--preset", "tiny", length_flag, "3", "--workers", "2", "--gpus-per-worker", "0.5",
              "--resume", "--seed", "7"]
    args = build_parser().parse_args(["train", trainer, *extra, *shared])
    length = getattr(args, length_flag.lstrip("-").replace("-", "_"))
    assert (args.out, args.preset, length, args.workers, args.gpus_per_worker, args.resume, args.seed) == (
        "o", "tiny", 3, 2, 0.5, True, 7)


def test_demo_takes_preset_and_the_hidden_tiny_alias(capsys):
    parser = build_parser()
    assert parser.parse_args(["demo"]).preset == "small"
    assert parser.parse_args(["demo", "--tiny"]).preset == "tiny"
    assert parser.parse_args(["demo", "--preset", "tiny"]).preset == "tiny"
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--help"])
    shown = capsys.readouterr().out
    assert "--tiny" not in shown and "--preset {tiny,small}" in shown


def test_help_is_instant_and_runs_as_a_module():
    code = ("import sys; from worldmodel.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('diffusers', 'ray', 'torch', 'grpc', 'envs', 'agents', 'services.server') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    result = subprocess.run([sys.executable, "-m", "worldmodel.cli", "train", "rllib", "--help"],
                            capture_output=True, text=True, check=True)
    assert "Reads: --bundle" in result.stdout and "--preset" in result.stdout and "--resume" in result.stdout


def test_rllib_refuses_an_earlier_run_and_a_missing_server_in_one_line(capsys, box_bundle, tmp_path):
    run = tmp_path / "rllib"
    run.mkdir()
    (run / "rllib.json").write_text('{"iterations": [{"iteration": 1}], "checkpoint": "checkpoints/iteration_000001"}')
    line = _one_line_error(capsys, ["train", "rllib", "--bundle", box_bundle, "--out", str(run)], "worldmodel train rllib")
    assert "at iteration 1" in line and "--resume" in line
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    line = _one_line_error(capsys, ["train", "rllib", "--bundle", box_bundle, "--out", str(tmp_path / "fresh"),
                                    "--remote", f"127.0.0.1:{port}"], "worldmodel train rllib")
    assert "no worldmodel server answers" in line
