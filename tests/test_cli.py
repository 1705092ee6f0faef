"""The ``ebmalgebra`` command line (run on the 2-D zoo models)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file

from ebmalgebra import zoo
from ebmalgebra.cli import format_program, main
from ebmalgebra.targets import Gaussian


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_zoo_lists_the_models(capsys):
    status, out, _ = run(capsys, "zoo")
    assert status == 0
    for name in ("ring", "bar", "left", "right"):
        assert f"\n{name} " in out


@pytest.mark.parametrize("expression", ["ring & bar", "ring & (left & ~right) ** 0.5",
                                        "0.3 * left | 0.7 * right", "(ring & bar) ** 0.5"])
def test_sample_writes_a_picture(capsys, tmp_path, expression):
    out = tmp_path / "grid.png"
    status, stdout, _ = run(capsys, "sample", expression, "--n", "32", "--steps", "80",
                            "--out", str(out))
    assert status == 0, stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out}" in stdout


@pytest.mark.parametrize("sampler", ["annealed", "mala", "ula", "hmc"])
def test_sample_is_reproducible_with_a_seed(capsys, tmp_path, sampler):
    def draw(seed: int, name: str) -> torch.Tensor:
        out = tmp_path / f"{name}.safetensors"
        status, _, err = run(capsys, "sample", "ring & left", "--n", "16", "--steps", "40",
                             "--sampler", sampler, "--seed", str(seed), "--out", str(out))
        assert status == 0, err
        return load_file(out)["samples"]

    first, again, other = draw(3, "first"), draw(3, "again"), draw(4, "other")
    assert first.shape == (16, 2) and torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_the_sampler_choice_changes_the_draws(capsys, tmp_path):
    # Same seed and steps: only --sampler differs, so equal draws mean it was ignored.
    draws = {}
    for sampler in ("annealed", "mala", "ula", "hmc"):
        out = tmp_path / f"{sampler}.safetensors"
        status, _, err = run(capsys, "sample", "ring & left", "--n", "8", "--steps", "40",
                             "--sampler", sampler, "--seed", "5", "--out", str(out))
        assert status == 0, err
        draws[sampler] = load_file(out)["samples"]
    names = list(draws)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            assert not torch.equal(draws[first], draws[second]), (first, second)


@pytest.mark.slow
def test_demo_prints_the_table_and_writes_the_picture(capsys, tmp_path):
    out = tmp_path / "figures" / "demo.pdf"  # any matplotlib format, folders created
    status, stdout, err = run(capsys, "demo", "--n", "2", "--steps", "60", "--sampler", "smc",
                              "--out", str(out))
    assert status == 0, err
    assert "without(glasses, hat, face, log_odds=8)" in stdout  # the negation row
    assert stdout.count(" ± ") == 6  # every row by SMC: log Z ± stderr
    assert "glasses & (face & ~hat) ** 0.35" in stdout  # the older form, for comparison
    header = next(line for line in stdout.splitlines() if line.startswith("expression"))
    assert "both" in header and header.split()[-3:] == ["log", "Z", "ESS"]
    assert out.read_bytes()[:5] == b"%PDF-"


def test_an_improper_expression_is_sampled_with_a_one_line_warning(capsys, tmp_path):
    out = tmp_path / "inverse.safetensors"
    status, _, err = run(capsys, "sample", "~ring", "--n", "16", "--steps", "80",
                         "--out", str(out))
    assert status == 0 and out.exists()
    assert err.startswith("ebmalgebra sample: warning: zoo.draw: ") and "~ring" in err
    assert "ImproperTargetWarning:" not in err  # Python's own warning format


@pytest.mark.parametrize("command", ["sample", "demo"])
def test_an_output_matplotlib_cannot_write_exits_2_before_sampling(capsys, tmp_path,
                                                                  monkeypatch, command):
    def never(*args, **kwargs):
        raise AssertionError("sampled although --out was unusable")

    monkeypatch.setattr(zoo, "draw", never)
    out = tmp_path / "samples.txt"
    argv = [command, "ring"] if command == "sample" else [command]
    status, stdout, err = run(capsys, *argv, "--out", str(out))
    assert status == 2 and stdout == ""
    assert "'.txt'" in err and ".png" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["sample", "demo"])
@pytest.mark.parametrize("where", ["inside a file", "a folder"])
def test_an_output_that_cannot_be_written_exits_2_before_sampling(capsys, tmp_path,
                                                                 monkeypatch, command, where):
    # Regression: the path was first written after sampling (minutes for the demo), and
    # mkdir's or savefig's OSError ended the CLI with a traceback.
    def never(*args, **kwargs):
        raise AssertionError("sampled although --out was unusable")

    monkeypatch.setattr(zoo, "draw", never)
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    if where == "a folder":
        out = tmp_path / "grid.png"
        out.mkdir()
    else:
        out = tmp_path / "notes.txt" / "figures" / "grid.png"
    argv = [command, "ring"] if command == "sample" else [command]
    status, stdout, err = run(capsys, *argv, "--out", str(out))
    assert status == 2 and stdout == ""
    assert str(out) in err and "folder" in err and "Traceback" not in err


def test_a_failed_write_exits_1_with_the_reason(capsys, tmp_path, monkeypatch):
    from ebmalgebra import plotting

    def refuse(figure, path, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(plotting, "save_figure", refuse)
    out = tmp_path / "grid.png"
    status, _, err = run(capsys, "sample", "ring", "--n", "2", "--steps", "10", "--out", str(out))
    assert status == 1
    assert err == f"ebmalgebra sample: error: [Errno 13] Permission denied: '{out}'\n"


@pytest.mark.parametrize("command", ["sample", "demo"])
def test_smc_with_one_sample_exits_2_before_any_output(capsys, tmp_path, command):
    # Regression: the demo printed its introduction, then failed with status 1 and
    # "n must be an int ≥ 2", naming no option.
    argv = [command, "ring"] if command == "sample" else [command]
    status, stdout, err = run(capsys, *argv, "--n", "1", "--sampler", "smc",
                              "--out", str(tmp_path / "grid.png"))
    assert status == 2 and stdout == ""
    assert err == (f"ebmalgebra {command}: error: --n must be at least 2 with --sampler smc, "
                   "which resamples among the samples; got 1\n")


def test_info_refuses_a_negative_sample_count(capsys):
    # Regression: --n -3 was taken, and silently sampled nothing, like --n 0.
    with pytest.raises(SystemExit) as caught:
        main(["info", "ring", "--n", "-3"])
    assert caught.value.code == 2
    assert "argument --n: expected an integer ≥ 0, got -3" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["(" * 300 + "ring" + ")" * 300, "~" * 2000 + "ring",
                                  "ring" + " ** 1" * 300],
                         ids=["300 parentheses", "2000 tildes", "300 powers"])
def test_deeply_nested_expressions_exit_2_with_a_message(capsys, text):
    status, out, err = run(capsys, "info", text, "--n", "0")
    assert status == 2 and out == ""
    assert "nests deeper than" in err and "Traceback" not in err


def test_info_prints_the_compiled_form_and_capabilities(capsys):
    status, out, _ = run(capsys, "info", "ring & (left & ~right) ** 0.5", "--n", "16")
    assert status == 0
    assert "E(x, σ) = E_ring + 0.5 E_left − 0.5 E_right" in out
    assert "ring & (left & ~right) ** 0.5  [energy, score]" in out
    assert "annealed Langevin" in out and "samples       16 (seed 0): mean" in out


@pytest.mark.parametrize("command", ["info", "sample"])
@pytest.mark.parametrize("expression", ["ring ** 0", "2 * ring ** 0 | bar ** 0"])
def test_a_constant_expression_is_not_sampled(capsys, tmp_path, command, expression):
    out = tmp_path / "grid.png"
    extra = ["--out", str(out)] if command == "sample" else []
    status, stdout, err = run(capsys, command, expression, *extra)
    assert status == 2
    assert "a constant model" in err and "cannot be sampled" in err
    assert "no event shape" in err and "Traceback" not in err
    assert "one:" not in stdout and not out.exists()


def test_info_of_a_constant_expression_lists_no_zoo_models(capsys):
    status, out, _ = run(capsys, "info", "ring ** 0", "--n", "0")
    assert status == 0
    assert out.endswith("zoo models\n  none\n")


def test_a_single_sample_has_no_std(capsys, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        status, out, err = run(capsys, "sample", "ring", "--n", "1", "--steps", "10",
                               "--out", str(tmp_path / "one.safetensors"))
    assert status == 0, err
    assert "std n/a" in out and "nan" not in out


def test_format_program_folds_weights_and_mixtures():
    a, b = Gaussian(torch.zeros(2), 1.0, name="a"), Gaussian(torch.ones(2), 1.0, name="b")
    assert format_program(a & a ** 2) == "E(x) = 3 E_a"
    assert format_program((a | b) ** 0.5) == "E(x) = 0.5 [−logsumexp(−E_a, −E_b)]"
    assert format_program(2 * a | b) == "E(x) = −logsumexp(−(E_a − 0.6931), −E_b)"


@pytest.mark.parametrize("argv, message, position", [
    (["sample", "ring & rign"], "unknown model 'rign'; did you mean 'ring'?", 7),
    (["sample", "ring &"], "expected a name, a number or '('", 6),
    (["info", "ring ** ring"], "the exponent must be a number", 8),
    (["sample", "ring | 2"], "'|' needs a model here", 7),
    (["sample", "(ring"], "expected ')'", 5),
    (["sample", "ring & glasses_"], "unknown model 'glasses_'", 7),
])
def test_bad_expressions_exit_2_and_point_at_the_position(capsys, argv, message, position):
    status, out, err = run(capsys, *argv)
    assert status == 2 and out == ""
    assert message in err
    shown, caret = err.rstrip("\n").splitlines()[-2:]
    assert shown == f"  {argv[1]}"
    assert caret == "  " + " " * position + "^"


@pytest.mark.parametrize("argv", [
    ["sample", "ring", "--n", "0"],
    ["sample", "ring", "--sampler", "gibbs"],
    ["sample", "ring", "--steps", "many"],
    ["bake"],
    [],
])
def test_bad_options_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "usage: ebmalgebra" in capsys.readouterr().err


def test_a_seed_out_of_the_generators_range_is_named(capsys):
    # Regression: argparse took any int and torch failed with "Overflow when unpacking
    # long long".
    with pytest.raises(SystemExit) as caught:
        main(["sample", "ring", "--seed", str(2**64)])
    assert caught.value.code == 2
    assert f"expected a seed in [-2**63, 2**64), got {2**64}" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "ebmalgebra", "sample", "ring & nope"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown model 'nope'" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == "  " + " " * 7 + "^"


@pytest.mark.parametrize("argv, unbuffered", [
    (["zoo"], "1"),                         # fails inside a print
    (["info", "ring", "--n", "4"], ""),     # fails at the final flush
])
def test_a_closed_stdout_stops_quietly(argv, unbuffered):
    # Closing the only read end before the child writes makes every write fail: no race.
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
    process = subprocess.Popen([sys.executable, "-m", "ebmalgebra", *argv], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert err == ""
    assert process.returncode == 141


def test_zoo_parse_uses_the_zoo_names():
    assert repr(zoo.parse("ring & bar ** 2")) == "ring & bar ** 2"


def test_the_demo_negation_parses_from_its_printed_form():
    from ebmalgebra.negation import Without

    expr = zoo.parse("without(glasses, hat, face, log_odds=8)")
    assert isinstance(expr, Without) and expr.log_odds == 8.0
    assert [leaf.name for leaf in expr.operands()] == ["glasses", "hat", "face"]
    assert repr(zoo.parse(repr(expr))) == repr(expr)
