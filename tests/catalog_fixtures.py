"""Small, valid records for tests that need a catalog of their own (written into tmp dirs)."""

from pathlib import Path

SUMMARY = """summary:
  problem: >-
    Rounding every weight of a large language model to a few bits loses accuracy because the
    rounding errors of different weights add up in the layer output.
  method: >-
    Weights are quantized one column at a time and the error of each rounded column is pushed onto
    the columns not yet quantized, using second-order information from calibration inputs so that
    the layer output changes as little as possible; updates are batched for speed.
  results: >-
    On the models tested the method keeps perplexity close to the full-precision model at four
    bits, where plain rounding degrades clearly, and it runs in hours for the largest models.
  limitations: >-
    Only weights are quantized and the quality depends on the calibration data that is used.
"""


def record_text(rid: str, *, title: str | None = None, arxiv: str = "2210.17323", year: int = 2022,
                related: str = "[]", themes: str = "[quantization]",
                taxonomy: str = "quantization/ptq/weight-only", extra: str = "") -> str:
    title = title or f"A test paper about {rid}"
    return (
        f"id: {rid}\n"
        f'title: "{title}"\n'
        "authors: [Ada Lovelace, Alan Turing]\n"
        f"year: {year}\n"
        "venue: ICLR 2023\n"
        f'arxiv: "{arxiv}"\n'
        f"url: https://arxiv.org/abs/{arxiv}\n"
        "code: null\n"
        f"themes: {themes}\n"
        f"taxonomy: {taxonomy}\n"
        "tags: [post-training, 4-bit]\n"
        + SUMMARY
        + f"related: {related}\n"
        + extra
    )


def write_catalog(directory: Path, records: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in records.items():
        (directory / f"{name}.yaml").write_text(text, encoding="utf-8")
    return directory


def two_good(directory: Path) -> Path:
    return write_catalog(directory, {
        "alpha": record_text("alpha", arxiv="2210.17323", related="[beta]"),
        "beta": record_text("beta", arxiv="2301.00774", year=2023),
    })
