"""Small generated input files for the shipped workflows (a condition image, a source video, a pose
video), written into a ComfyUI input/ folder under the names the workflows use.

The pictures are synthetic (gradients, a stick figure that moves): enough for the loaders, the
frontend's previews and the stand-in models; nothing is downloaded.
"""
import math
import os

import numpy as np


def image_array(width, height, seed=0):
    """An RGB gradient with a soft disc and a little noise (uint8, height x width x 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(1, width - 1), y / max(1, height - 1)
    disc = np.exp(-(((u - 0.5) ** 2 + (v - 0.4) ** 2) / 0.03))
    img = np.stack([0.25 + 0.6 * u, 0.3 + 0.5 * v, 0.6 - 0.3 * u + 0.3 * disc], -1)
    img = img + 0.04 * rng.standard_normal(img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_image(path, width=64, height=64, seed=0):
    from PIL import Image
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(image_array(width, height, seed)).save(path)
    return path


# OpenPose-style limbs (neck, shoulders, arms, hips, legs, head) in the usual OpenPose colours
_LIMBS = [((0, 1), (255, 0, 0)), ((1, 2), (255, 85, 0)), ((2, 3), (255, 170, 0)), ((1, 4), (170, 255, 0)),
          ((4, 5), (85, 255, 0)), ((1, 6), (0, 255, 85)), ((6, 7), (0, 255, 170)), ((1, 8), (0, 85, 255)),
          ((8, 9), (0, 0, 255)), ((1, 10), (255, 0, 170))]


def pose_frame(width, height, t):
    """A black frame with a stick figure whose arms and legs swing with phase ``t`` (uint8 HxWx3)."""
    from PIL import Image, ImageDraw
    s = min(width, height)
    cx, cy = width / 2, height * 0.3
    a = math.sin(t)
    pts = [(cx, cy), (cx, cy + 0.12 * s),
           (cx - 0.12 * s, cy + 0.14 * s), (cx - 0.2 * s, cy + 0.3 * s + 0.1 * s * a),
           (cx + 0.12 * s, cy + 0.14 * s), (cx + 0.2 * s, cy + 0.3 * s - 0.1 * s * a),
           (cx - 0.06 * s, cy + 0.42 * s), (cx - 0.1 * s + 0.06 * s * a, cy + 0.66 * s),
           (cx + 0.06 * s, cy + 0.42 * s), (cx + 0.1 * s - 0.06 * s * a, cy + 0.66 * s),
           (cx, cy - 0.08 * s)]
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    thick = max(1, s // 40)
    for (i, j), color in _LIMBS:
        draw.line([pts[i], pts[j]], fill=color, width=thick)
    for x, y in pts:
        draw.ellipse([x - thick - 1, y - thick - 1, x + thick + 1, y + thick + 1], fill=(255, 255, 255))
    return np.asarray(img)


def write_video(path, frames=8, width=64, height=64, fps=12, pose=False, seed=0):
    """An H.264 mp4 (PyAV, installed with ComfyUI): a drifting gradient, or a dancing stick figure."""
    import av
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    base = image_array(width, height, seed)
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            if pose:
                img = pose_frame(width, height, 2 * math.pi * i / max(1, frames))
            else:
                img = np.roll(base, shift=i * max(1, width // 32), axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_frame_count(path):
    import av
    with av.open(path) as container:
        return sum(1 for _ in container.decode(video=0))


def write_workflow_inputs(input_dir, image="example.png", source_video="source_video.mp4",
                          pose_video="video1_girl_poseseq.mp4", size=64, frames=8, overwrite=True):
    """The inputs every shipped workflow names, at ``size`` x ``size`` (``overwrite=False``: keep
    files that exist)."""
    todo = [(image, lambda p: write_image(p, size, size)),
            (source_video, lambda p: write_video(p, frames, size, size)),
            (pose_video, lambda p: write_video(p, frames, size, size, pose=True))]
    for name, write in todo:
        path = os.path.join(input_dir, name)
        if overwrite or not os.path.exists(path):
            write(path)
    return {"image": image, "source_video": source_video, "pose_video": pose_video}
