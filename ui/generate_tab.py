"""The Generate tab: one row per library adapter (on/off, name, trigger, weight, preview), the painting
settings, and the Generate, Save-blend and Grid buttons, over stylelora.generate, merge and grid."""

from __future__ import annotations

import random
import re

import gradio as gr

from stylelora.adapters.library import AdapterEntry, known_bases, list_adapters
from stylelora.adapters.stack import StyleWeight
from stylelora.errors import StyleloraError
from stylelora.files import free_path
from stylelora.options import page_values
from stylelora.paint.generate import generate
from stylelora.paint.grid import axis_names, make_grid, parse_weights
from stylelora.paint.merge_job import MergeConfig, merge
from stylelora.paint.request import GenerateConfig, GridConfig
from stylelora.ui.fields import widget
from stylelora.ui.session import Session, error_message, shown_path
from stylelora.ui.train_fields import base_dropdown, quantize_dropdown


def generate_tab(session: Session):
    """Lays the tab out; returns what the page refreshes when the library changes: a function of no arguments
    and the components it fills (the adapter rows and the base list)."""
    # Inputs are marked interactive: their listeners are attached inside gr.render below,
    # which Gradio cannot see when it first draws the page.
    with gr.Row():
        base = base_dropdown(session.adapters, "gen-base")
        refresh = gr.Button("Refresh the adapter list", elem_id="gen-refresh")
    prompt, negative = (widget(GenerateConfig, name, interactive=True) for name in ("prompt", "negative"))
    # A callable: read again each time the page loads, so a new browser tab shows today's library.
    library = gr.State(lambda: library_rows(session))
    gr.Markdown("**Adapters** (in the library's order): tick the ones to paint with and set each one's weight.",
                elem_id="gen-adapters")

    @gr.render(inputs=[library])
    def adapter_rows(entries):
        controls = []
        if not entries:
            gr.Markdown(f"No adapters in `{session.adapters}` yet: train one, or import one in the Library tab.")
        for name, trigger, preview in entries:
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower())
            # Keyed by name: when the library changes and the rows are drawn again, ticks and weights stay
            with gr.Row(equal_height=True, elem_id=f"row-{slug}"):
                on = gr.Checkbox(False, label="on", elem_id=f"on-{slug}", interactive=True, scale=0, min_width=60,
                                 key=f"on-{name}")
                gr.Markdown(f"**{name}**" + (f"  \ntrigger: `{trigger}`" if trigger else "  \nno trigger word"),
                            elem_id=f"name-{slug}")
                # A text box, read as the command line reads a weight: a number (any, not clamped), or parts
                # (unet=0.8,te=0.5, down=,mid=,up=); anything else is refused in one line, never taken as 0
                weight = gr.Textbox("1", label=f"{name} weight (a number, or unet=…,te=…)", elem_id=f"weight-{slug}",
                                    interactive=True, max_lines=1, scale=3, key=f"weight-{name}")
                gr.Image(preview, show_label=False, height=96, width=96, container=False, interactive=False,
                         buttons=[], elem_id=f"preview-{slug}", scale=0, min_width=96)
            controls += [on, weight]
        names = [name for name, _, _ in entries]
        paint_controls(session, names, controls, base, prompt, negative, settings, (gallery, grid_image), message,
                       blend, grid)

    with gr.Row():
        seed = widget(GenerateConfig, "seed", interactive=True)
        random_seed = gr.Checkbox(False, label="Random seed", interactive=True)
        steps, cfg, count, width, height = (widget(GenerateConfig, name, interactive=True)
                                            for name in ("steps", "cfg", "count", "width", "height"))
    with gr.Accordion("Advanced", open=False):
        quantize = quantize_dropdown("gen-quantize-base")
        with gr.Row():
            blend_rule, density = (widget(GenerateConfig, name, interactive=True) for name in ("blend", "blend_density"))
    settings = (quantize, seed, random_seed, steps, cfg, count, width, height, blend_rule, density)
    go = gr.Button("Generate", variant="primary", elem_id="generate")
    message = gr.Markdown(elem_id="gen-status")
    gallery = gr.Gallery(label="Results", columns=4, height=300, elem_id="gallery", format="png", interactive=False,
                         object_fit="contain")
    with gr.Accordion("Save this blend / X-Y grid", open=False):
        with gr.Row():
            blend_name = gr.Textbox("blend", label="Save the blend as", interactive=True)
            save_blend = gr.Button("Save this blend as an adapter", elem_id="save-blend")
        with gr.Row():
            grid_weights = gr.Textbox("0,0.5,1", label="Weights for the first adapter (columns)", interactive=True,
                                      elem_id="grid-weights")
            grid_weights_b = gr.Textbox("", label="Weights for the second adapter (rows; empty = prompt only)",
                                        interactive=True, elem_id="grid-weights-b")
            grid_judge = widget(GridConfig, "judge", interactive=True)
            grid_button = gr.Button("Make a grid", elem_id="grid")
        # The whole grid, at its own size (a gallery cell would crop it), its axes named
        grid_image = gr.Image(label="Grid", elem_id="grid-image", interactive=False, format="png")
    blend, grid = (go, save_blend, blend_name), (grid_button, grid_weights, grid_weights_b, grid_judge)
    refresh.click(lambda: library_view(session), None, [library, base])
    return lambda: library_view(session), [library, base]


def library_rows(session: Session) -> list[tuple[str, str, str | None]]:
    return [entry_row(e) for e in list_adapters(session.adapters)]


def library_view(session: Session) -> tuple:
    """The adapter rows and the base list, as the library on disk stands."""
    return library_rows(session), gr.update(choices=known_bases(session.adapters))


def entry_row(entry: AdapterEntry) -> tuple[str, str, str | None]:
    """What a Generate row shows of a library entry: its name, trigger word and latest preview."""
    return entry.name, entry.trigger, str(entry.preview) if entry.preview else None


def paint_controls(session: Session, names: list[str], controls: list, base, prompt, negative, settings, shown,
                   message, blend, grid) -> None:
    """The Generate, Save-blend and Grid buttons' handlers over the adapter rows' on/off boxes and weights."""
    quantize, seed, random_seed, steps, cfg, count, width, height, blend_rule, density = settings
    gallery, grid_image = shown
    go, save_blend, blend_name = blend
    grid, grid_weights, grid_weights_b, grid_judge = grid

    def specs(values):
        """FILE:WEIGHT for each ticked adapter; a weight that does not read raises a one-line ConfigError naming it."""
        paths = session.adapter_paths()
        pairs = list(zip(values[0::2], values[1::2]))
        chosen = [(n, str(w).strip()) for n, (on_, w) in zip(names, pairs) if on_ and n in paths]
        for name, weight in chosen:
            StyleWeight.parse(weight, flag=name)  # "stripes weight '1,5': give a number like 0.7, ..."
        return [f"{paths[n]}:{w}" for n, w in chosen]

    def run(base_, quantize_, prompt_, negative_, seed_, random_, steps_, cfg_, count_, width_, height_, blend_,
            density_, *values):
        seed_ = random.randrange(2**31) if random_ else int(seed_)
        try:
            fields = dict(negative=negative_, count=count_, steps=steps_, cfg=cfg_, width=width_, height=height_,
                          blend=blend_, blend_density=density_)
            config = GenerateConfig(prompt_, tuple(specs(values)), base_, seed=seed_, out=session.workspace / "outputs",
                                    quantize_base=quantize_, **page_values(GenerateConfig, fields))
            with session.painting:
                paths = generate(config, session.styler(base_, quantize_))  # new names: none overwrites the last
        except StyleloraError as error:
            return [], error_message(error)  # the last paint's pictures go: they are not this prompt's
        return [str(p) for p in paths], (f"{len(paths)} image{'s' if len(paths) != 1 else ''}, seeds {seed_} to "
                                         f"{seed_ + len(paths) - 1}, saved in `{shown_path(config.out)}`.")

    def save(blend_, *values):
        try:
            out = session.adapters / f"{re.sub(r'[^A-Za-z0-9_-]', '_', blend_ or 'blend')}.safetensors"
            merge(MergeConfig(tuple(specs(values)), out))
        except StyleloraError as error:
            return error_message(error)
        return f"Saved the blend as {out.name}."

    def grid_run(base_, quantize_, prompt_, seed_, steps_, cfg_, blend_, density_, judge_, weights, weights_b, *values):
        try:
            chosen_specs = specs(values)
            if not chosen_specs:
                return gr.skip(), "**Error:** choose at least one adapter"
            lora_b = chosen_specs[1].rsplit(":", 1)[0] if weights_b and len(chosen_specs) > 1 else None
            config = GridConfig((prompt_,), chosen_specs[0].rsplit(":", 1)[0], parse_weights(weights, "weights"),
                                free_path(session.workspace / "outputs" / f"grid-{int(seed_)}.png"), lora_b,
                                parse_weights(weights_b, "weights-b") if lora_b else (), base_, "", int(steps_),
                                float(cfg_), int(seed_), quantize_base=quantize_, blend=blend_,
                                blend_density=float(density_), judge=bool(judge_))
            with session.painting:
                path = make_grid(config, session.styler(base_, quantize_))
        except StyleloraError as error:
            return gr.update(value=None, label="Grid"), error_message(error)
        across, down = axis_names(config)
        label = f"Grid: {across}'s weight across, " + (f"{down}'s weight down" if down else "the prompt down")
        return gr.update(value=str(path), label=label), f"Grid saved in `{shown_path(path)}`."

    # The last paint's message (an error, say) gives way at once, not when the new paint ends
    go.click(lambda: "Painting…", None, [message], queue=False).then(
        run, [base, quantize, prompt, negative, seed, random_seed, steps, cfg, count, width, height, blend_rule,
              density] + controls,
        [gallery, message])
    save_blend.click(save, [blend_name] + controls, [message])
    grid.click(lambda: "Painting the grid…", None, [message], queue=False).then(
        grid_run, [base, quantize, prompt, seed, steps, cfg, blend_rule, density, grid_judge, grid_weights,
                   grid_weights_b] + controls,
        [grid_image, message])
