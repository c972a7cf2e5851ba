"""API-format prompts on the stand-in models (tests/standins.py) for the HTTP tests.

Loader nodes keep the same ids and inputs in every prompt, so that ComfyUI's cache keeps the
models loaded between prompts of one server (and so that a later prompt reuses the very MODEL
object an earlier one patched)."""
import json
import threading
import queue as _queue

SIZE = 64


def loaders(s, variant="musev", image=None):
    p = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": s.checkpoint}},
        "motion": {"class_type": "LoadMuseVMotion", "inputs": {"model": ["ckpt", 0], "motion_model": s.motion[variant],
                                                               "frame_rate": 8.0, "temporal_layers": True}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a girl dancing"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "worst quality"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": s.vae}},
    }
    if image is not None:
        p["image"] = {"class_type": "LoadImage", "inputs": {"image": image}}
    return p


def sampler_inputs(model=("motion", 0), **over):
    inputs = {"model": list(model), "positive": ["pos", 0], "negative": ["neg", 0], "frames": 2, "width": SIZE,
              "height": SIZE, "context_frames": 2, "context_overlap": 1, "context_schedule": "uniform_v2",
              "context_batch_size": 1, "noise_type": "video_fusion", "w_ind_noise": 0.5, "img_weight": 0.001,
              "seed": 1, "steps": 1, "cfg": 3.5, "sampler_name": "euler", "scheduler": "normal",
              "include_condition_frames": True}
    inputs.update(over)
    return inputs


def t2v_prompt(s, seed, prefix, latent_only=False, **sampler):
    """Tiny text-to-video: LoadMuseVMotion -> ParallelDenoiseSampler -> VAEDecode -> SaveImage ("save"),
    or with ``latent_only`` SaveLatent ("save", half the time on CPU: no VAE decode)."""
    p = loaders(s)
    p["sampler"] = {"class_type": "ParallelDenoiseSampler", "inputs": sampler_inputs(seed=seed, **sampler)}
    if latent_only:
        p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": prefix}}
        return p
    p["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["vae", 0]}}
    p["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}}
    return p


class WsListener:
    """Messages of ComfyUI's /ws for one client id, collected by a thread of its own (aiohttp)."""

    def __init__(self, server, client_id):
        self.url = server.url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
        self.messages = _queue.Queue()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="musev-ws", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"no websocket connection to {self.url}: {self._error}")

    def _run(self):
        import asyncio

        import aiohttp

        async def main():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(self.url, heartbeat=10) as ws:
                    self._ready.set()
                    while not self._stop.is_set():
                        try:
                            msg = await ws.receive(timeout=0.2)
                        except asyncio.TimeoutError:
                            continue
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self.messages.put(json.loads(msg.data))
                        elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            return
        try:
            asyncio.run(main())
        except Exception as e:  # noqa: BLE001  (reported by the constructor / wait_for)
            self._error = e
            self._ready.set()

    def wait_for(self, predicate, timeout):
        """The first message (dict with "type", "data") for which predicate is true."""
        import time
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching websocket message within {timeout} s ({self._error})")
            try:
                msg = self.messages.get(timeout=min(left, 0.5))
            except _queue.Empty:
                continue
            if predicate(msg):
                return msg

    def close(self):
        self._stop.set()
        self._thread.join(timeout=10)
