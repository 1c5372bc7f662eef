"""``xcam demo``: the whole job on the bundled model and sample images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from xcam.demo import model_card, sample_images


def run_demo(out: Path, echo: Callable[[str], None] = print) -> list[Path]:
    """Grad-CAM overlays, a layer grid, a method grid and predictions; returns what it wrote."""
    from xcam.images import load_image, preprocess
    from xcam.methods import get_method
    from xcam.methods.cam import CAM
    from xcam.methods.gradcam import GradCAM
    from xcam.models import load_model
    from xcam.pipeline import explain_files
    from xcam.viz import method_layer_grid, panel, save_png

    info = load_model("demo")
    card = model_card()
    if card:
        h = card.get("heldout", {})
        echo(
            f"demo model: {len(card['classes'])} classes ({', '.join(card['classes'])}); "
            f"held-out accuracy {h.get('accuracy', float('nan')):.3f}, "
            f"Grad-CAM pointing game {h.get('pointing_game', float('nan')):.3f}"
        )
    paths = sample_images()
    report = explain_files(info, paths, GradCAM(info.model, "block3"), out)
    for item in report.items:
        best = item["predictions"][0]
        echo(f"  {Path(item['image']).name}: {best['name']} ({best['probability']:.2f})")

    images = [load_image(p) for p in paths]
    x = preprocess(images, info.input_size, info.mean, info.std)
    layers = ["block1", "block2", "block3"]
    by_layer = {f"Grad-CAM {n}": GradCAM(info.model, n)(x).maps for n in layers}
    layer_grid = save_png(panel(images, by_layer, cell_size=128), out / "grid_layers.png")
    by_method = {"CAM": CAM(info.model, "block3")(x).maps}
    for name in ("gradcam", "gradcam++", "layercam", "scorecam", "reciprocam", "fullgrad"):
        method = get_method(name)
        by_method[name] = (
            method(info.model, "block3") if method.uses_layers else method(info.model)
        )(x).maps
    method_grid = save_png(panel(images, by_method, cell_size=96), out / "grid_methods.png")
    # one image: methods x layers
    first = x[:1]
    cells = {
        name: {layer: get_method(name)(info.model, layer)(first).maps[0] for layer in layers}
        for name in ("gradcam", "layercam", "scorecam", "eigencam")
    }
    both = save_png(
        method_layer_grid(images[0], cells, cell_size=128), out / "grid_methods_layers.png"
    )
    overlays = [out / item["overlay"] for item in report.items]
    assert report.predictions is not None
    return [*overlays, layer_grid, method_grid, both, report.predictions]
