"""The challenge score formulas reproduce the reports' own ranking tables."""
import pytest

from distill.challenge_scores import mai2021_score, mai2022_score

# (PSNR dB, runtime ms, final score) from MAI 2021 Table 1 (seed 001)
MAI2021_ROWS = [(23.2, 61, 25.98), (23.73, 90.8, 25.91), (23.30, 78, 25.74), (22.97, 65, 25.67),
                (22.78, 77, 25.24), (23.08, 94.5, 25.19), (22.03, 76.3, 24.5), (22.84, 167, 23.5),
                (23.41, 231, 23.39), (23.23, 1861, 22.4)]
# (PSNR dB, GPU runtime ms, final score) from MAI 2022 Table 1 (seed 002)
MAI2022_ROWS = [(23.33, 6.8, 14.87), (23.8, 18.9, 10.27), (23.89, 34.3, 6.41), (23.65, 41.5, 3.8),
                (24.08, 212, 1.35), (24.09, 482, 0.6), (23.22, 182, 0.48), (21.66, 28, 0.36),
                (24.09, 1044, 0.28), (23.96, 11.4, 21.24), (23.87, 23.1, 9.25), (23.6, 15.6, 9.43),
                (24.72, 194, 3.58)]


@pytest.mark.parametrize(("psnr", "runtime_ms", "score"), MAI2021_ROWS)
def test_mai2021_score_matches_the_report(psnr: float, runtime_ms: float, score: float) -> None:
    assert mai2021_score(psnr, runtime_ms) == pytest.approx(score, abs=0.011)


@pytest.mark.parametrize(("psnr", "runtime_ms", "score"), MAI2022_ROWS)
def test_mai2022_score_matches_the_report(psnr: float, runtime_ms: float, score: float) -> None:
    # the table prints PSNR to 0.01 dB, which alone moves the score by up to ~0.7 %
    assert mai2022_score(psnr, runtime_ms) == pytest.approx(score, rel=0.01)


def test_runtime_clip_and_branch() -> None:
    assert mai2021_score(20.0, 10) == pytest.approx(20.0 + 20 * (0.2 - 0.03))  # clipped at 30 ms
    assert mai2021_score(20.0, 9000) == pytest.approx(20.0 + 0.5 * (0.2 - 5.0))  # clipped at 5 s
    assert mai2021_score(20.0, 200) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="runtime"):
        mai2022_score(23.0, 0)
