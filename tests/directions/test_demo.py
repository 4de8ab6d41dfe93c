import re

from steepest.directions.__main__ import main


def test_demo_prints_error_table(capsys):
    main(["--families", "gaussian,rank_deficient,zero"])
    out = capsys.readouterr().out
    assert "| direction | gaussian | rank_deficient | zero |" in out
    row = next(line for line in out.splitlines() if line.startswith("| msgn svd |"))
    errors = [float(x) for x in re.findall(r"\d\.\de[+-]\d+", row)]
    assert len(errors) == 3 and max(errors) < 1e-5
