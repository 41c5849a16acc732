"""The miniature world and its judge, without the model: the judge must read the generator's own images."""

from stylelora.mini.judge import judge
from stylelora.mini.tokenizer import build_vocab, _bpe
from stylelora.mini.world import WORDS, corpus


def test_judge_reads_the_worlds_own_images():
    images, _, scenes = corpus(300, seed=42)
    fields = ("shape", "colour", "texture", "palette")
    right = {f: 0 for f in fields}
    for image, scene in zip(images, scenes):
        verdict = judge(image)
        for f in fields:
            right[f] += getattr(verdict, f) == getattr(scene, f)
    assert all(count / len(scenes) >= 0.98 for count in right.values()), right


def test_corpus_is_deterministic_and_captions_name_colour_and_shape():
    a_images, a_captions, scenes = corpus(20, seed=1)
    b_images, b_captions, _ = corpus(20, seed=1)
    assert (a_images == b_images).all() and a_captions == b_captions
    assert all(s.colour in c and s.shape in c for s, c in zip(scenes, a_captions))
    assert any(s.texture not in c for s, c in zip(scenes, a_captions))  # style named only sometimes


def test_every_world_word_is_one_token():
    vocab, merges = build_vocab(WORDS)
    ranks = {m: i for i, m in enumerate(merges)}
    assert all(len(_bpe(word, ranks)) == 1 for word in WORDS)
    assert all(token in vocab for word in WORDS for token in _bpe(word, ranks))


def test_judge_reads_faint_and_blurred_textures_by_their_direction():
    import dataclasses

    import numpy as np

    from stylelora.mini.world import random_scene, render

    rng = np.random.default_rng(5)
    noise = np.random.default_rng(6)
    for texture in ("striped", "dotted", "solid"):
        for _ in range(10):
            scene = random_scene(rng, texture=texture, palette="normal")
            image = render(scene).astype(np.float32)
            flat = render(dataclasses.replace(scene, texture="solid")).astype(np.float32)
            # Half the texture's contrast, a 3-pixel box blur and a little noise: what the model paints.
            faint = flat + (image - flat) / 2
            blurred = sum(np.roll(faint, (dy, dx), (0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
            noisy = np.clip(blurred + noise.normal(0, 2, blurred.shape), 0, 255).astype(np.uint8)
            assert judge(noisy).texture == texture, (texture, scene)


def _confusion_set():
    """Pictures made with the world's renderer that a person would not call "a red circle"."""
    import dataclasses

    import numpy as np
    from PIL import Image, ImageFilter

    from stylelora.mini.world import random_scene, render, shape_mask

    rng = np.random.default_rng(11)
    for index in range(12):
        scene = random_scene(rng, shape="circle", colour="red", texture="solid", palette="normal")
        scene = dataclasses.replace(scene, radius=14.0, cx=32.0, cy=32.0)
        inside = shape_mask(scene)
        for name, rgb in {"orange": (250, 140, 20), "purple": (140, 60, 200), "brown": (130, 80, 40),
                          "grey": (128, 128, 128), "yellow-orange": (235, 165, 35)}.items():
            image = render(scene)
            image[inside] = rgb
            yield f"{name} circle {index}", image, {"colour"}
        bled = np.empty_like(render(scene))
        bled[:] = (220, 40, 40)
        bled[inside] = (150, 150, 150)
        yield f"colour-bled {index}", bled, {"colour", "shape"}
        two = render(dataclasses.replace(scene, radius=10.0, cx=16.0, cy=16.0))
        second = shape_mask(dataclasses.replace(scene, radius=10.0, cx=46.0, cy=46.0))
        two[second] = render(scene)[inside][0]
        yield f"two shapes {index}", two, {"colour", "shape"}
        empty = np.empty_like(bled)
        empty[:] = scene.background
        yield f"empty {index}", empty, {"colour", "shape"}
        blurred = np.asarray(Image.fromarray(render(scene)).filter(ImageFilter.GaussianBlur(3 + index % 3)))
        yield f"blurred {index}", blurred, {"colour", "shape"}


def test_judge_is_strict_on_a_confusion_set():
    said = []
    for label, image, not_said in _confusion_set():
        verdict = judge(image)
        if ("colour" in not_said and verdict.colour == "red") or ("shape" in not_said and verdict.shape == "circle"):
            said.append((label, verdict))
    assert not said, said


def test_broken_pictures_are_broken():
    import numpy as np

    from stylelora.mini.world import random_scene, render, shape_mask

    scene = random_scene(np.random.default_rng(3), shape="circle", colour="blue")
    grey = render(scene)
    grey[shape_mask(scene)] = (128, 128, 128)
    bled = render(scene)
    bled[:, :20] = (40, 70, 220)  # the colour runs out of the shape to the edge
    assert judge(grey).broken and judge(bled).broken
    verdict = judge(render(scene))
    assert not verdict.broken and verdict.colour == "blue" and verdict.shape == "circle"
