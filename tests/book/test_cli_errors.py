"""Bad input on the command line fails in one line naming the parameter or file and the fix,
before any kernel or model starts: never a traceback."""
import pytest

from mechlib.cli import main


def one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as code:
        main(argv)
    assert code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_a_value_that_is_not_yaml_names_the_parameter(capsys):
    assert "-p n_per_cell '[unclosed'" in one_line_error(capsys, ["chapter", "01_baseline", "-p", "n_per_cell", "[unclosed"])


def test_a_binary_parameter_set_is_not_a_text_file(capsys, tmp_path):
    binary = tmp_path / "set.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    assert "not a text file" in one_line_error(capsys, ["chapter", "01_baseline", "--params", str(binary)])


def test_a_gguf_file_or_any_file_given_as_a_model_says_what_it_is(capsys, tmp_path):
    gguf = tmp_path / "other.gguf"
    gguf.write_bytes(b"GGUF")
    assert "is a GGUF file" in one_line_error(capsys, ["chapter", "01_baseline", "-p", "model", str(gguf)])
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    assert "is a file; expected a checkpoint directory" in one_line_error(capsys, ["chapter", "01_baseline", "-p", "model", str(other)])


def test_build_with_an_empty_chapter_list_is_refused(capsys):
    assert "give at least one chapter name" in one_line_error(capsys, ["build", "--chapters"])


def test_a_repeated_model_is_refused_naming_it(capsys):
    err = one_line_error(capsys, ["chapter", "01_baseline", "-p", "real_models", "[smollm2-135m-instruct, smollm2-135m-instruct]"])
    assert "'real_models'" in err and "more than once" in err
