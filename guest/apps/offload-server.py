#!/usr/bin/python3
"""offload-server: one real offload app behind a small HTTP server, for vmsynth's Debian guest.

Usage: python3 offload-server.py APP [--port 8000]     APP: speech | ocr | face | compute

The app's model is loaded once at start; requests take turns on it (one lock).
  GET  /health -> 200 {"ok":true,"app":APP}
  GET  /count?add=1 -> 200 {"count":N}: a counter kept in the server, counted on by each such request
                  (GET /count reads it); a handoff benchmark's stream of small requests, whose count
                  shows that the app's state went with it and that no request ran twice.
  POST /run    -> 200 {"app":APP, ...result}; the compute time in ms is in the X-Compute-Ms header,
                  so the body is byte-identical for the same input.
                  400 {"error":...} for bad input, 500 {"error":...} for anything else.
Bodies and results:
  speech   WAV, 16 kHz mono 16-bit PCM  -> {"text"}   pocketsphinx (python3-pocketsphinx, pocketsphinx-en-us)
  ocr      an image (PNG, JPEG, TIFF..) -> {"text"}   tesseract via tesserocr (python3-tesserocr, tesseract-ocr-eng)
  face     an image (PNG, JPEG..)       -> {"faces": [[x,y,w,h],...]}   OpenCV Haar cascade (python3-opencv, opencv-data)
  compute  JSON {"grid":N,"steps":S} (default 32, 8: ~0.1 s) -> {"grid","steps","checksum"}   Jos Stam's stable fluids, pure python
Debian bookworm packages only; python3 stdlib plus each app's own module, imported only for that app.
Guest: apt-get install --no-install-recommends python3 plus the app's two packages above (compute: python3 alone).
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 64 << 20


class BadInput(Exception):
    """The request body is not a valid input for the app: answered with 400."""


def speech_app():
    import io
    import wave
    from pocketsphinx import Decoder

    model = "/usr/share/pocketsphinx/model/en-us"
    config = Decoder.default_config()
    config.set_string("-hmm", model + "/en-us")
    config.set_string("-lm", model + "/en-us.lm.bin")
    config.set_string("-dict", model + "/cmudict-en-us.dict")
    config.set_string("-logfn", "/dev/null")
    decoder = Decoder(config)

    def run(body):
        try:
            with wave.open(io.BytesIO(body)) as w:
                shape = (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getcomptype())
                pcm = w.readframes(w.getnframes())
        except (wave.Error, EOFError) as e:
            raise BadInput(f"not a WAV file: {e}")
        if shape != (16000, 1, 2, "NONE"):
            raise BadInput("the WAV must be 16 kHz, mono, 16-bit PCM")
        decoder.start_utt()
        decoder.process_raw(pcm, False, True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return {"text": hyp.hypstr if hyp else ""}

    return run


def ocr_app():
    import tempfile
    import tesserocr

    api = tesserocr.PyTessBaseAPI(lang="eng")

    def run(body):
        with tempfile.NamedTemporaryFile() as f:  # tesserocr takes encoded images only as a file (or PIL, or BMP)
            f.write(body)
            f.flush()
            try:
                api.SetImageFile(f.name)
            except (RuntimeError, NameError):  # without python3-pil, tesserocr 2.5 fails on NameError here
                raise BadInput("not an image leptonica can read (PNG, JPEG, TIFF, BMP..)")
        return {"text": api.GetUTF8Text().strip()}

    return run


def face_app():
    import cv2
    import numpy

    cascade = cv2.CascadeClassifier("/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml")
    if cascade.empty():
        raise RuntimeError("cannot load the Haar cascade (is opencv-data installed?)")

    def run(body):
        image = cv2.imdecode(numpy.frombuffer(body, numpy.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise BadInput("not an image OpenCV can decode")
        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(30, 30))
        return {"faces": sorted([int(v) for v in box] for box in found)}

    return run


def compute_app():
    """Jos Stam, "Real-Time Fluid Dynamics for Games" (2003): density and velocity on an (N+2)^2 grid."""

    def solve(n, b, x, x0, a, c, iters):
        w = n + 2
        for _ in range(iters):
            for j in range(1, n + 1):
                row = j * w
                for k in range(row + 1, row + n + 1):
                    x[k] = (x0[k] + a * (x[k - 1] + x[k + 1] + x[k - w] + x[k + w])) / c
            bound(n, b, x)

    def bound(n, b, x):
        w = n + 2
        for i in range(1, n + 1):
            x[i] = -x[i + w] if b == 2 else x[i + w]
            x[i + (n + 1) * w] = -x[i + n * w] if b == 2 else x[i + n * w]
            x[i * w] = -x[i * w + 1] if b == 1 else x[i * w + 1]
            x[i * w + n + 1] = -x[i * w + n] if b == 1 else x[i * w + n]
        x[0] = 0.5 * (x[1] + x[w])
        x[(n + 1) * w] = 0.5 * (x[(n + 1) * w + 1] + x[n * w])
        x[n + 1] = 0.5 * (x[n] + x[w + n + 1])
        x[(n + 1) * w + n + 1] = 0.5 * (x[(n + 1) * w + n] + x[n * w + n + 1])

    def diffuse(n, b, x, x0, diff, dt, iters):
        a = dt * diff * n * n
        solve(n, b, x, x0, a, 1 + 4 * a, iters)

    def advect(n, b, d, d0, u, v, dt):
        w, dt0 = n + 2, dt * n
        for j in range(1, n + 1):
            for i in range(1, n + 1):
                k = i + j * w
                x = min(max(i - dt0 * u[k], 0.5), n + 0.5)
                y = min(max(j - dt0 * v[k], 0.5), n + 0.5)
                i0, j0 = int(x), int(y)
                s1, t1 = x - i0, y - j0
                s0, t0 = 1 - s1, 1 - t1
                k0 = i0 + j0 * w
                d[k] = s0 * (t0 * d0[k0] + t1 * d0[k0 + w]) + s1 * (t0 * d0[k0 + 1] + t1 * d0[k0 + 1 + w])
        bound(n, b, d)

    def project(n, u, v, p, div, iters):
        w, h = n + 2, 1.0 / n
        for j in range(1, n + 1):
            for k in range(j * w + 1, j * w + n + 1):
                div[k] = -0.5 * h * (u[k + 1] - u[k - 1] + v[k + w] - v[k - w])
                p[k] = 0.0
        bound(n, 0, div)
        bound(n, 0, p)
        solve(n, 0, p, div, 1, 4, iters)
        for j in range(1, n + 1):
            for k in range(j * w + 1, j * w + n + 1):
                u[k] -= 0.5 * (p[k + 1] - p[k - 1]) / h
                v[k] -= 0.5 * (p[k + w] - p[k - w]) / h
        bound(n, 1, u)
        bound(n, 2, v)

    def simulate(n, steps, iters=10, dt=0.1, visc=0.0001, diff=0.0001):
        size, w = (n + 2) * (n + 2), n + 2
        u, v, d = [0.0] * size, [0.0] * size, [0.0] * size
        u0, v0, d0 = [0.0] * size, [0.0] * size, [0.0] * size
        for step in range(steps):
            # a steady plume: density and an upward push in a small square near the bottom centre
            for j in range(n // 8 + 1, n // 4 + 1):
                for i in range(n // 2 - n // 8, n // 2 + n // 8 + 1):
                    d[i + j * w] += dt * 100.0
                    v[i + j * w] += dt * 5.0
                    u[i + j * w] += dt * (1.0 if step % 2 else -1.0)
            u0, u = u, u0
            diffuse(n, 1, u, u0, visc, dt, iters)
            v0, v = v, v0
            diffuse(n, 2, v, v0, visc, dt, iters)
            project(n, u, v, u0, v0, iters)
            u0, u = u, u0
            v0, v = v, v0
            advect(n, 1, u, u0, u0, v0, dt)
            advect(n, 2, v, v0, u0, v0, dt)
            project(n, u, v, u0, v0, iters)
            d0, d = d, d0
            diffuse(n, 0, d, d0, diff, dt, iters)
            d0, d = d, d0
            advect(n, 0, d, d0, u, v, dt)
        return sum(d[k] * (1 + k % 7) for k in range(size)) + sum(abs(x) for x in u) + sum(abs(x) for x in v)

    def run(body):
        try:
            spec = json.loads(body or b"{}")
            n, steps = int(spec.get("grid", 32)), int(spec.get("steps", 8))
        except (ValueError, TypeError, AttributeError) as e:
            raise BadInput(f'want JSON {{"grid":N,"steps":S}}: {e}')
        if not (4 <= n <= 512 and 1 <= steps <= 10000):
            raise BadInput("grid must be 4..512 and steps 1..10000")
        return {"grid": n, "steps": steps, "checksum": round(simulate(n, steps), 6)}

    return run


APPS = {"speech": speech_app, "ocr": ocr_app, "face": face_app, "compute": compute_app}


def serve(app, port):
    run, lock = APPS[app](), threading.Lock()
    counter = {"count": 0, "lock": threading.Lock()}

    class Handler(BaseHTTPRequestHandler):
        def reply(self, status, obj, ms=None):
            body = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if ms is not None:
                self.send_header("X-Compute-Ms", f"{ms:.3f}")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                self.reply(200, {"ok": True, "app": app})
            elif self.path in ("/count", "/count?add=1"):
                with counter["lock"]:
                    counter["count"] += self.path.endswith("add=1")
                    count = counter["count"]
                self.reply(200, {"count": count})
            else:
                self.reply(404, {"error": "no such path; try GET /health, GET /count or POST /run"})

        def do_POST(self):
            if self.path != "/run":
                return self.reply(404, {"error": "no such path; try GET /health or POST /run"})
            try:
                length = int(self.headers.get("Content-Length", "0"))
                if not 0 <= length <= MAX_BODY:
                    raise ValueError
            except ValueError:
                return self.reply(400, {"error": f"need a Content-Length of 0..{MAX_BODY}"})
            body = self.rfile.read(length)
            try:
                with lock:
                    start = time.perf_counter()
                    result = run(body)
                    ms = (time.perf_counter() - start) * 1000
            except BadInput as e:
                return self.reply(400, {"error": str(e)})
            except Exception as e:
                return self.reply(500, {"error": f"{type(e).__name__}: {e}"})
            self.reply(200, {"app": app, **result}, ms)

        def log_message(self, *args):
            pass  # quiet: no line per request

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="An offload app behind a small HTTP server.")
    parser.add_argument("app", choices=sorted(APPS))
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    serve(args.app, args.port)
