"""A small captioned video set a model can learn from: balls under gravity, simulated and rendered.

Each video is a 2D rigid-body simulation: 1-4 balls of varied colour and size fall under gravity, bounce
off the floor, walls and ceiling (with a little energy loss) and off each other (impulse collisions, mass
proportional to area). They are rendered with anti-aliased edges and a soft highlight on a vertical
gradient background, and encoded as H.264 mp4. The caption is written from the simulation itself: counts,
colours, sizes, background, where each ball starts and which moves it makes, and which balls collide.

Output layout (the layout of NVIDIA's post-training examples):

    OUT_DIR/videos/sample_0000.mp4     the clips
    OUT_DIR/metas/sample_0000.txt      one caption per clip (same stem)
    OUT_DIR/prompts.jsonl              one {"prompt", "visual_input"} per clip, the input of
                                       `prepare v2w`; `visual_input` is relative to OUT_DIR

Video `i` depends only on `(seed, i)` and the frame/size/fps arguments, so the set is deterministic for a
seed and growing `num_videos` keeps the earlier videos unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cosmos_nemo.io.atomic import atomic_write_text
from cosmos_nemo.io.video import write_mp4

# Ball colours (RGB) with the names used in captions. Backgrounds are chosen so every ball contrasts.
BALL_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 215, 40),
    "green": (50, 180, 70),
    "cyan": (40, 200, 210),
    "blue": (45, 85, 220),
    "purple": (140, 60, 200),
    "pink": (240, 120, 180),
    "white": (240, 240, 240),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (12, 12, 16),
    "dark blue": (16, 28, 70),
    "dark green": (18, 60, 34),
    "grey": (120, 120, 126),
    "light grey": (200, 200, 205),
    "beige": (225, 210, 180),
    "brown": (95, 62, 40),
}
SIZES: dict[str, float] = {"small": 0.055, "medium": 0.085, "large": 0.12}  # radius / min(H, W)
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
ORDINAL_SIZE = ("small", "medium", "large")


@dataclass(frozen=True)
class Ball:
    colour: str
    size: str
    radius: float  # pixels


@dataclass
class SimulationLog:
    """What happened during a simulation, used to write the caption."""

    wall_bounces: list[int]  # per ball: hits on the left/right walls or the ceiling
    floor_bounces: list[int]  # per ball
    collisions: dict[tuple[int, int], int]  # (i, j) with i < j -> number of distinct contacts


def _colour_distance(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float)))


def _choose_scene(rng: np.random.Generator, height: int, width: int, ball_scale: float = 1.0):
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    bg_rgb = BACKGROUNDS[background]
    # Only colours clearly visible on this background; all balls in a scene have different colours so
    # the caption can name each one unambiguously.
    usable = [c for c, rgb in BALL_COLOURS.items() if _colour_distance(rgb, bg_rgb) > 110]
    count = int(rng.integers(1, 5))
    colours = [usable[k] for k in rng.permutation(len(usable))[:count]]
    short = min(height, width)
    balls = []
    for colour in colours:
        size = ORDINAL_SIZE[rng.integers(3)]
        balls.append(Ball(colour, size, SIZES[size] * short * ball_scale))
    return background, balls


def _initial_state(rng: np.random.Generator, balls: list[Ball], height: int, width: int):
    """Non-overlapping starting positions (rejection sampling) in the upper two thirds, random velocities."""
    pos = np.zeros((len(balls), 2))  # (x, y), y grows downwards
    for i, b in enumerate(balls):
        for _ in range(1000):
            p = np.array([rng.uniform(b.radius, width - b.radius), rng.uniform(b.radius, height * 0.66)])
            if all(np.linalg.norm(p - pos[j]) > b.radius + balls[j].radius + 1 for j in range(i)):
                break
        pos[i] = p
    speed = 0.9 * min(height, width)  # pixels per second
    vel = np.stack([rng.uniform(-speed, speed, len(balls)), rng.uniform(-0.6 * speed, 0.3 * speed, len(balls))], 1)
    return pos, vel


def simulate(
    balls: list[Ball],
    pos: np.ndarray,
    vel: np.ndarray,
    num_frames: int,
    height: int,
    width: int,
    fps: float,
    restitution: float = 0.88,
    substeps: int = 8,
) -> tuple[np.ndarray, SimulationLog]:
    """Positions `[num_frames, n, 2]` (x, y pixels) of the balls, frame 0 being the initial state.

    Semi-implicit Euler with `substeps` steps per frame; gravity pulls down (+y) at 2.2 frame-heights/s².
    Wall and floor contacts reflect the normal velocity scaled by `restitution`. Ball-ball contacts apply
    the impulse of a collision with that restitution between masses proportional to radius², and push the
    pair apart so they never stay interpenetrated.
    """
    n = len(balls)
    radius = np.array([b.radius for b in balls])
    mass = radius**2
    gravity = 2.2 * height
    dt = 1.0 / (fps * substeps)
    pos = pos.astype(np.float64).copy()
    vel = vel.astype(np.float64).copy()
    log = SimulationLog([0] * n, [0] * n, {})
    touching: set[tuple[int, int]] = set()
    # A bounce is counted only after the ball has left the surface by a few pixels, so a ball resting on
    # the floor (or squeezed against it by others) does not count as bouncing every substep.
    clear = max(2.0, 0.02 * height)
    airborne = [[True] * 4 for _ in range(n)]  # per ball: left, right, top, floor
    out = np.zeros((num_frames, n, 2))
    out[0] = pos
    for f in range(1, num_frames):
        for _ in range(substeps):
            vel[:, 1] += gravity * dt
            pos += vel * dt
            for i in range(n):
                r = radius[i]
                gaps = (pos[i, 0] - r, width - r - pos[i, 0], pos[i, 1] - r, height - r - pos[i, 1])
                for side, gap in enumerate(gaps):
                    if gap > clear:
                        airborne[i][side] = True
                hits = (
                    pos[i, 0] < r and vel[i, 0] < 0,
                    pos[i, 0] > width - r and vel[i, 0] > 0,
                    pos[i, 1] < r and vel[i, 1] < 0,
                    pos[i, 1] > height - r and vel[i, 1] > 0,
                )
                for side, hit in enumerate(hits):
                    if not hit:
                        continue
                    axis = 0 if side < 2 else 1
                    pos[i, axis] = (r, width - r, r, height - r)[side]
                    vel[i, axis] = -vel[i, axis] * restitution
                    if airborne[i][side]:
                        airborne[i][side] = False
                        if side == 3:
                            log.floor_bounces[i] += 1
                        else:
                            log.wall_bounces[i] += 1
            for i in range(n):
                for j in range(i + 1, n):
                    d = pos[j] - pos[i]
                    dist = float(np.hypot(*d))
                    overlap = radius[i] + radius[j] - dist
                    if overlap <= 0:
                        touching.discard((i, j))
                        continue
                    normal = d / dist if dist > 1e-9 else np.array([1.0, 0.0])
                    approach = float(np.dot(vel[i] - vel[j], normal))
                    if approach > 0:
                        impulse = (1 + restitution) * approach / (1 / mass[i] + 1 / mass[j])
                        vel[i] -= impulse / mass[i] * normal
                        vel[j] += impulse / mass[j] * normal
                    # Positional correction split by inverse mass.
                    total = 1 / mass[i] + 1 / mass[j]
                    pos[i] -= normal * overlap * (1 / mass[i]) / total
                    pos[j] += normal * overlap * (1 / mass[j]) / total
                    if (i, j) not in touching:
                        touching.add((i, j))
                        log.collisions[(i, j)] = log.collisions.get((i, j), 0) + 1
        out[f] = pos
    return out, log


def render(balls: list[Ball], positions: np.ndarray, background: str, height: int, width: int) -> np.ndarray:
    """uint8 frames `[T, H, W, 3]`: gradient background, shaded anti-aliased discs (later balls on top)."""
    bg = np.asarray(BACKGROUNDS[background], np.float32)
    shade = np.linspace(1.08, 0.8, height, dtype=np.float32)[:, None, None]  # lighter at the top
    base = np.clip(bg[None, None, :] * shade, 0, 255) * np.ones((1, width, 1), np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    frames = np.empty((positions.shape[0], height, width, 3), np.uint8)
    for t in range(positions.shape[0]):
        img = base.copy()
        for b, (x, y) in zip(balls, positions[t]):
            dx, dy = xx - x, yy - y
            dist = np.sqrt(dx * dx + dy * dy)
            alpha = np.clip(b.radius + 0.5 - dist, 0.0, 1.0)[..., None]
            # Highlight offset up-left: brightness falls from 1.25 at the highlight to 0.65 at the rim.
            hx, hy = dx + 0.35 * b.radius, dy + 0.35 * b.radius
            light = 1.25 - 0.6 * np.clip(np.sqrt(hx * hx + hy * hy) / (1.35 * b.radius), 0, 1)
            colour = np.clip(np.asarray(BALL_COLOURS[b.colour], np.float32) * light[..., None], 0, 255)
            img = img * (1 - alpha) + colour * alpha
        frames[t] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return frames


def _region(x: float, y: float, height: int, width: int) -> str:
    vertical = "top" if y < height / 3 else ("bottom" if y > 2 * height / 3 else "middle")
    horizontal = "left" if x < width / 3 else ("right" if x > 2 * width / 3 else "centre")
    if vertical == "middle" and horizontal == "centre":
        return "the centre"
    if vertical == "middle":
        return f"the {horizontal}"
    if horizontal == "centre":
        return f"the {vertical}"
    return f"the {vertical} {horizontal}"


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def caption_for(
    balls: list[Ball], background: str, positions: np.ndarray, vel0: np.ndarray, log: SimulationLog, height: int, width: int
) -> str:
    """A caption describing the scene and what the simulation did."""
    n = len(balls)
    names = [f"the {b.colour} ball" for b in balls]
    described = [f"a {b.size} {b.colour} ball" for b in balls]
    if n == 1:
        opening = f"A {balls[0].size} {balls[0].colour} ball moves under gravity in front of a {background} background."
    else:
        opening = (
            f"{NUMBER_WORDS[n].capitalize()} balls move under gravity in front of a {background} background: "
            f"{_join(described)}."
        )
    sentences = [opening]
    for i, b in enumerate(balls):
        x0, y0 = positions[0, i]
        xs, ys = positions[-1, i]
        direction = "rightwards" if vel0[i, 0] > 0 else "leftwards"
        verb = "is thrown upwards and " + direction if vel0[i, 1] < -0.1 * height else f"drifts {direction} and falls"
        moves = []
        if log.floor_bounces[i]:
            moves.append("bounces on the floor" + (f" {_times(log.floor_bounces[i])}" if log.floor_bounces[i] > 1 else ""))
        if log.wall_bounces[i]:
            moves.append("hits a wall" + (f" {_times(log.wall_bounces[i])}" if log.wall_bounces[i] > 1 else ""))
        tail = f", then {_join(moves)}" if moves else ""
        sentences.append(
            f"{names[i].capitalize()} starts at {_region(x0, y0, height, width)}, {verb}{tail}, "
            f"and ends at {_region(xs, ys, height, width)}."
        )
    if n > 1:
        hits = [f"{names[i]} and {names[j]} collide {_times(c)}" for (i, j), c in sorted(log.collisions.items())]
        sentences.append((_join(hits) + ".").capitalize() if hits else "The balls never touch each other.")
    sentences.append("The camera is static and the scene is lit from the upper left.")
    return " ".join(sentences)


def _times(k: int) -> str:
    return {1: "once", 2: "twice"}.get(k, f"{k} times")


def _simulate_clip(seed: int, index: int, num_frames: int, height: int, width: int, fps: float, ball_scale: float):
    rng = np.random.default_rng([seed, index])
    background, balls = _choose_scene(rng, height, width, ball_scale)
    pos, vel = _initial_state(rng, balls, height, width)
    positions, log = simulate(balls, pos, vel, num_frames, height, width, fps)
    return background, balls, positions, vel, log


def make_clip(seed: int, index: int, num_frames: int, height: int, width: int, fps: float, ball_scale: float = 1.0):
    """Frames `[T, H, W, 3]` uint8 and the caption of sample `index` for `seed`."""
    background, balls, positions, vel, log = _simulate_clip(seed, index, num_frames, height, width, fps, ball_scale)
    frames = render(balls, positions, background, height, width)
    return frames, caption_for(balls, background, positions, vel, log, height, width)


def foreground_masks(seed: int, index: int, num_frames: int, height: int, width: int, fps: float,
                     ball_scale: float = 1.0) -> np.ndarray:
    """bool `[T, H, W]`: the pixels the balls of sample `index` cover (at least half), from the simulation
    itself, for measuring how well a model reproduces the moving objects rather than the background."""
    _, balls, positions, _, _ = _simulate_clip(seed, index, num_frames, height, width, fps, ball_scale)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    masks = np.zeros((num_frames, height, width), bool)
    for t in range(num_frames):
        for b, (x, y) in zip(balls, positions[t]):
            masks[t] |= np.hypot(xx - x, yy - y) <= b.radius
    return masks


def generate_sample_dataset(
    out_dir: str | os.PathLike,
    num_videos: int = 8,
    seed: int = 0,
    num_frames: int = 33,
    height: int = 128,
    width: int = 128,
    fps: int = 12,
    progress: bool = False,
    ball_scale: float = 1.0,
) -> list[Path]:
    """Write `num_videos` captioned clips under `out_dir` (layout in the module docstring).

    `ball_scale` multiplies every ball's radius (the small/medium/large radii are 5.5/8.5/12 % of the short side).
    Returns the mp4 paths in order. Every file is written under a temporary name and renamed when
    complete; `prompts.jsonl` is written last, so its presence means the set is complete.
    """
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if height < 16 or width < 16:
        raise ValueError(f"height and width must be >= 16 pixels, got {height}x{width}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not 0.25 <= ball_scale <= 3.0:
        raise ValueError(f"ball_scale must be in [0.25, 3], got {ball_scale}")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "metas").mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    records = []
    indices = range(num_videos)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="sample-data", unit="video")
    for i in indices:
        frames, caption = make_clip(seed, i, num_frames, height, width, fps, ball_scale)
        stem = f"sample_{i:04d}"
        video = write_mp4(out / "videos" / f"{stem}.mp4", frames, fps=fps, crf=18, deterministic=True)
        atomic_write_text(out / "metas" / f"{stem}.txt", caption + "\n")
        paths.append(video)
        records.append({"prompt": caption, "visual_input": f"videos/{stem}.mp4"})
    atomic_write_text(out / "prompts.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return paths
