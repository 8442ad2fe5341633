"""ICSH 2015 grading of red-cell morphology (Palmer et al., Int J Lab Hematol 37:287, Table 2): each type at
and around the boundaries of its grades, the summary built from counts, and its flags."""

import pytest

from bccdet.morphology import FLAG_CODES, ICSH_GRADES, icsh_grade, morphology_counts, morphology_summary
from bccdet.vocab import RBC_MORPHOLOGY

SIZE_AND_COLOUR = ("macrocyte", "microcyte", "hypochromia")  # 1+ 11-20 %, 2+ 21-50 %, 3+ > 50 %
POIKILOCYTES = ("spherocyte", "target_cell", "stomatocyte", "ovalocyte", "elliptocyte", "teardrop", "burr_cell")  # 5-20 / 21-50 / > 50


def test_every_abnormal_type_has_a_grade_rule_and_a_flag_code():
    assert set(ICSH_GRADES) == set(RBC_MORPHOLOGY) - {"normal"} == set(FLAG_CODES)
    assert set(SIZE_AND_COLOUR) | set(POIKILOCYTES) | {"schistocyte"} == set(ICSH_GRADES)
    with pytest.raises(KeyError):
        icsh_grade("normal", 50.0)


@pytest.mark.parametrize("t", SIZE_AND_COLOUR)
@pytest.mark.parametrize("pct, grade", [(0, "0"), (5, "0"), (10, "0"), (10.9, "0"), (11, "1+"), (15, "1+"), (20, "1+"),
                                        (20.4, "2+"), (21, "2+"), (50, "2+"), (50.1, "3+"), (51, "3+"), (100, "3+")])
def test_size_and_haemoglobin_grades(t, pct, grade):
    assert icsh_grade(t, pct) == grade


@pytest.mark.parametrize("t", POIKILOCYTES)
@pytest.mark.parametrize("pct, grade", [(0, "0"), (4.9, "0"), (5, "1+"), (12, "1+"), (20, "1+"), (20.5, "2+"),
                                        (21, "2+"), (50, "2+"), (51, "3+"), (80, "3+")])
def test_poikilocyte_grades(t, pct, grade):
    assert icsh_grade(t, pct) == grade


@pytest.mark.parametrize("pct, grade", [(0, "0"), (0.1, "1+"), (0.5, "1+"), (0.99, "1+"), (1.0, "2+"), (1.5, "2+"),
                                        (2.0, "2+"), (2.01, "3+"), (3, "3+"), (10, "3+")])
def test_schistocytes_graded_from_their_first_fragment_and_moderate_from_one_percent(pct, grade):
    assert icsh_grade("schistocyte", pct) == grade


def test_summary_from_counts_grades_percent_of_typed_red_cells_and_flags_from_2plus():
    counts = morphology_counts(["normal"] * 870 + ["schistocyte"] * 12 + ["target_cell"] * 60 + ["microcyte"] * 58
                               + [None] * 40)  # untyped cells are not in the base
    s, flags = morphology_summary(counts)
    assert s["red_cells"] == 1000
    assert s["schistocyte"] == {"count": 12, "percent": 1.2, "grade": "2+"}
    assert s["target_cell"]["grade"] == "1+" and s["microcyte"]["grade"] == "0"
    assert s["normal"] == {"count": 870, "percent": 87.0, "grade": None}
    assert [f["code"] for f in flags] == ["schistocytes"]
    assert "few" not in flags[0]["message"] and "ICSH grade 2+" in flags[0]["message"]
    s2, flags2 = morphology_summary(morphology_counts(["normal"] * 60 + ["spherocyte"] * 40))
    assert s2["spherocyte"]["grade"] == "2+" and [f["code"] for f in flags2] == ["spherocytes"]
    assert "graded on 100 red cells" in flags2[0]["message"]  # fewer than ICSH's 1000: said
    s3, flags3 = morphology_summary(morphology_counts([]))
    assert s3["red_cells"] == 0 and not flags3 and all(s3[t]["percent"] == 0.0 for t in RBC_MORPHOLOGY)


def test_a_field_unlike_the_training_fields_reports_grades_but_flags_none():
    """A blurry phone-camera field (BCCD) came out mostly "spherocyte" at a median score of ~0.75; Chula
    validation fields score 0.85 and up (morphology.MIN_FIELD_SCORE)."""
    from bccdet.morphology import MIN_FIELD_SCORE

    counts = morphology_counts(["normal"] * 4 + ["spherocyte"] * 12 + ["schistocyte"] * 2)
    s, flags = morphology_summary(counts, median_score=0.75)
    assert s["unfamiliar"] is True and s["median_score"] == 0.75 and s["spherocyte"]["grade"] == "3+"
    assert [f["code"] for f in flags] == ["rbc_morphology_unfamiliar"]
    s, flags = morphology_summary(counts, median_score=MIN_FIELD_SCORE)
    assert s["unfamiliar"] is False and {f["code"] for f in flags} == {"spherocytes", "schistocytes"}
