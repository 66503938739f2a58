"""``edgedistill data``: the embedded data sets written out as image folders."""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.cli.common import deploy_example, next_step, results_console, shell_words


@click.command("data")
@click.argument("name", type=click.Choice(["digits"]))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="New folder to write: <out>/train/<class>/*.png and <out>/val/<class>/*.png.")
@click.option("--img-size", type=int, default=32, show_default=True,
              help="Side of the written images (the size data.path=digits trains at).")
def command(name: str, out: Path, img_size: int) -> None:
    """Write an embedded data set (the quickstart's digits) as labeled image folders, e.g. the
    gallery a deploy example classifies against."""
    from edgedistill.errors import EdgeDistillError
    from edgedistill.limits import MAX_IMAGE_SIDE
    from edgedistill.utils import check_new

    if not 8 <= img_size <= MAX_IMAGE_SIDE:
        raise EdgeDistillError(f"--img-size must be at least 8 and at most {MAX_IMAGE_SIDE}, got {img_size}")
    check_new(out)  # before torch is imported: a second run answers at once
    from edgedistill.data.digits import write_digits

    counts = write_digits(out, img_size)
    con = results_console()
    con.print(f"{name}: {counts['train']} train and {counts['val']} val images, 10 classes, {img_size} px, "
              f"written to {out}", highlight=False, soft_wrap=True)
    next_step(con, shell_words("python", deploy_example(), "--bundle", "export/NAME", "--gallery", out / "train",
                               "--images", out / "val" / "3"))
