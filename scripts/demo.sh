#!/usr/bin/env bash
# The README's first command: a whole RayVault run on one machine.
#
# It builds both binaries, starts a worker on loopback with a freshly
# generated secret, and runs what a pipeline would: text to speech of a short
# script, AUDIO_POSTCHECK of the rendered chunks, FFMPEG_PROBE and
# FRAME_SAMPLING of a generated clip. Then it stops the worker and submits
# again to show the controller falling back to local execution. It ends with
# a one-screen summary: each job, where it ran, and the QC verdict.
#
# Exit codes: 0 when every job succeeded and the QC passed, 3 when the QC
# (AUDIO_POSTCHECK) verdict failed, 1 when a job failed.
# Everything it makes lives under target/demo/ (state, media, logs). The
# worker and the controller's daemon API use free ports of their own, so the
# demo never meets a worker or daemon already running on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  say "checking tools (ffmpeg, espeak-ng, ...)"
  bash scripts/install_deps.sh
fi

say "building rayvault-worker and rayvault-orchestrator (the first build takes several minutes; later ones seconds)"
cargo build --bins
bin=${CARGO_TARGET_DIR:-$root/target}/debug

demo=$root/target/demo
rm -rf "$demo"
mkdir -p "$demo/state/cluster" "$demo/media"
export RAYVAULT_STATE_DIR=$demo/state
# A secret only this run knows; it lives in the environment, never in argv.
RAYVAULT_CLUSTER_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export RAYVAULT_CLUSTER_SECRET

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
# The controller looks for a daemon on its API port before running a job
# itself; a port of the demo's own keeps it from meeting another daemon
# (which would refuse the demo's secret).
RAYVAULT_CONTROLLER__API_PORT=$(free_port)
export RAYVAULT_CONTROLLER__API_PORT
cat > "$demo/state/cluster/nodes.json" <<JSON
{"nodes": [{"node_id": "demo-worker-1", "host": "127.0.0.1", "port": $port, "enabled": true}]}
JSON

say "starting rayvault-worker on 127.0.0.1:$port (logs: $demo/worker.out)"
RAYVAULT_WORKER_ID=demo-worker-1 RAYVAULT_STATE_DIR=$demo/worker-state \
  "$bin/rayvault-worker" --host 127.0.0.1 --port "$port" >"$demo/worker.out" 2>&1 &
worker_pid=$!
trap 'kill "$worker_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1)" 2>/dev/null; then break; fi
  kill -0 "$worker_pid" 2>/dev/null || { cat "$demo/worker.out" >&2; echo "worker failed to start" >&2; exit 1; }
  sleep 0.1
done

orch() { "$bin/rayvault-orchestrator" "$@"; }

say "controller: health and caps"
orch health
orch caps

submit() { # run_id job_id step payload: prints the receipt JSON; stops the demo if the job failed
  local out code=0
  out=$(orch submit --run-id "$1" --job-id "$2" --step-name "$3" --payload-json "$4" --json) || code=$?
  if [ "$code" -ne 0 ]; then
    orch result --run-id "$1" --job-id "$2" >&2 || true
    echo "demo: job $2 failed (exit $code)" >&2
    exit "$code"
  fi
  printf '%s' "$out"
}
field() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }

say "TTS_RENDER_CHUNKS: a short voice-over script"
script="Welcome to RayVault. This demo renders speech on a worker. Then it checks the audio, probes a clip, and samples frames."
tts=$(submit demo_run tts_001 TTS_RENDER_CHUNKS "$(python3 -c 'import json,sys; print(json.dumps({"text": sys.argv[1], "max_chars": 60}))' "$script")")
chunks=$(printf '%s' "$tts" | field '" ".join(json.dumps(a["path"]) for a in r["artifacts"] if a["name"].endswith(".wav"))')
echo "rendered: $chunks"

say "AUDIO_POSTCHECK of the rendered chunks"
# Exit code 3 means the job ran and its verdict failed: the demo reports it
# in the summary and exits 3 at the end.
qc_code=0
orch submit --run-id demo_run --job-id postcheck_001 --step-name AUDIO_POSTCHECK --json \
  --payload-json "{\"audio_paths\": [$(echo "$chunks" | sed 's/" "/", "/g')]}" >"$demo/postcheck.json" || qc_code=$?
if [ "$qc_code" -ne 0 ] && [ "$qc_code" -ne 3 ]; then
  orch result --run-id demo_run --job-id postcheck_001 >&2 || true
  echo "demo: the AUDIO_POSTCHECK job failed (exit $qc_code)" >&2
  exit "$qc_code"
fi
field '"passed=%s\n" % r["result"]["passed"] + "\n".join("  %s: %s LUFS, true peak %s dBTP, problems %s" % (f.get("path","?").split("/")[-1], f.get("integrated_lufs"), f.get("true_peak_dbtp"), [p["code"] for p in f["problems"]] or "none") for f in r["result"]["files"])' <"$demo/postcheck.json"
if [ "$(field 'r["result"]["passed"]' <"$demo/postcheck.json")" != True ]; then qc_code=3; fi

say "generating a 10 s test clip with ffmpeg"
clip=$demo/media/clip.mp4
ffmpeg -hide_banner -loglevel error -nostdin -y -f lavfi -i testsrc2=size=1280x720:rate=30:duration=10 \
  -f lavfi -i sine=frequency=440:duration=10 -c:v libx264 -preset ultrafast -pix_fmt yuv420p -c:a aac -shortest "$clip"

say "FFMPEG_PROBE of the clip"
submit demo_run ffprobe_001 FFMPEG_PROBE "{\"media_path\": \"$clip\"}" \
  | field '"duration_s=%s, streams=%s" % (r["result"]["duration_s"], [(s["codec_type"], s["codec_name"]) for s in r["result"]["streams"]])'

say "FRAME_SAMPLING: 5 frames at most 640 px wide"
submit demo_run frames_001 FRAME_SAMPLING "{\"media_path\": \"$clip\", \"count\": 5, \"max_width\": 640}" \
  | field '"strategy=%s, frames=%s" % (r["result"]["strategy"], [(f["name"], f["width"], f["height"]) for f in r["result"]["frames"]])'

say "stopping the worker to show the fallback"
kill "$worker_pid"; wait "$worker_pid" 2>/dev/null || true
submit demo_run ffprobe_002 FFMPEG_PROBE "{\"media_path\": \"$clip\"}" \
  | field '"executed_on=%s; fallback_reason=%s" % (r["executed_on"], r["fallback_reason"])'

say "summary"
python3 - "$bin/rayvault-orchestrator" "$RAYVAULT_STATE_DIR/cluster/receipts/demo_run" tts_001 postcheck_001 ffprobe_001 frames_001 ffprobe_002 <<'PY'
import json, os, sys
orch, root, jobs = sys.argv[1], sys.argv[2], sys.argv[3:]
what = {"tts_001": "speech from text", "postcheck_001": "QC of that speech", "ffprobe_001": "probe a video",
        "frames_001": "sample 5 frames", "ffprobe_002": "probe again, worker stopped"}
print("%-14s %-18s %-28s %-26s %s" % ("JOB", "STEP", "WHAT", "STATUS", "RAN ON"))
qc = None
for job in jobs:
    r = json.load(open(os.path.join(root, job, "job_receipt.json")))
    where = r.get("executed_on") or "-"
    if where == "local":
        where = "this machine (fallback: %s)" % r.get("fallback_reason") if r.get("fallback_reason") else "this machine"
    else:
        where = "worker " + where
    status = r["status"] + (", verdict " + r["verdict"] if r.get("verdict") else "")
    print("%-14s %-18s %-28s %-26s %s" % (job, r["step_name"], what.get(job, ""), status, where))
    if r["step_name"] == "AUDIO_POSTCHECK":
        qc = r
print()
if qc is not None:
    res = qc.get("result") or {}
    files = res.get("files") or []
    failing = [f for f in files if not f.get("passed")]
    verdict = qc.get("verdict") or ("passed" if res.get("passed") else "failed")
    print("QC verdict: %s (%d of %d chunk(s) within the loudness, peak and silence limits)" % (verdict.upper(), len(files) - len(failing), len(files)))
    for f in failing:
        print("  %s: %s" % (os.path.basename(f.get("path", "?")), ", ".join(p["code"] for p in f.get("problems", []))))
print()
print("Receipts (what ran, where, why, and the artifacts): %s/<job>/job_receipt.json" % root)
state = os.path.dirname(os.path.dirname(os.path.dirname(root)))
print("Look at one:  RAYVAULT_STATE_DIR=%s %s result --run-id demo_run --job-id postcheck_001" % (state, orch))
PY
if [ "$qc_code" -ne 0 ]; then
  echo "demo: the QC verdict failed (exit 3); see the summary above" >&2
  exit 3
fi