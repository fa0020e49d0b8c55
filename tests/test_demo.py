"""`nnglass demo` on SmolLM2: every experiment prints what the walkthrough shows, and the logit-lens PNG is written."""
import contextlib
import io
import re
import struct

import pytest

from nnglass import demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(exit code, printed text, PNG path) of one demo run, shared by the tests of this module."""
    out = tmp_path_factory.mktemp("demo") / "lens.png"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = demo.main(["--out", str(out)])
    print(buffer.getvalue())  # shown by pytest when a test fails
    return code, buffer.getvalue(), out


def section(text: str, number: int) -> str:
    """The lines printed by experiment `number`, its heading included."""
    match = re.search(rf"^{number}\. .*?(?=^\d\. |^Done in|\Z)", text, re.S | re.M)
    assert match, f"experiment {number} missing from the output:\n{text}"
    return match.group(0)


def test_exit_code_and_every_experiment_is_printed(run):
    code, text, _ = run
    assert code == 0
    for number in range(1, 8):
        section(text, number)
    assert re.search(r"^Done in [\d.]+ s\.$", text, re.M)
    assert 30 <= len(text.splitlines()) <= 70  # readable at a glance


def test_prediction_is_paris_with_top5(run):
    one = section(run[1], 1)
    top5 = re.search(r"top-5 next tokens: (.*)", one).group(1)
    assert top5.startswith("' Paris' ")
    assert len(re.findall(r"\d+\.\d%", top5)) == 5
    assert "the model predicts ' Paris'." in one


def test_ablation_changes_the_prediction(run):
    two = section(run[1], 2)
    before, after = re.search(r"before: ('.*?') .*after: ('.*?') ", two).groups()
    assert before == "' Paris'" and after != before
    assert "the prediction changed." in two


def test_two_invokes_run_in_one_forward_pass(run):
    three = section(run[1], 3)
    assert "forward calls of the model: 1 (input_ids [2, " in three
    assert "batch size 2" in three
    assert "invoke 2 (original): ' Paris'" in three
    assert "invoke 1 (ablated MLP): ' Paris'" not in three
    assert "ONE forward pass" in three


def test_moved_embeddings_make_the_placeholder_predict_paris(run):
    four = section(run[1], 4)
    assert "placeholder: '_ _ _ _ _ _ _ _ _' (9 tokens)" in four
    assert "placeholder with the prompt's embeddings: ' Paris'" in four
    assert "placeholder alone: ' Paris'" not in four


def test_generation_prints_each_step_and_the_text(run):
    five = section(run[1], 5)
    assert "step 1: ' Paris'" in five and "step 2: " in five and "step 3: " in five
    assert "full text: 'The Eiffel Tower is in the city of Paris" in five


def test_early_stop_runs_only_the_first_layers(run):
    six = section(run[1], 6)
    assert "decoder layers that ran: 6 of 30 (0-5)" in six
    assert re.search(r"full pass \d+ ms, stopped \d+ ms", six)


def test_logit_lens_png_is_written_and_valid(run):
    _, text, out = run
    assert str(out) in section(text, 7)
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 400 and height >= 400
    assert 10_000 < len(data) < 10_000_000
    assert data.endswith(b"IEND\xaeB`\x82")
