#!/usr/bin/env bash
# The README's first command: a whole RayVault run on one machine.
#
# It builds both binaries, starts a worker on loopback with a freshly
# generated secret, and runs what a pipeline would: text to speech of a short
# script, AUDIO_POSTCHECK of the rendered chunks, FFMPEG_PROBE and
# FRAME_SAMPLING of a generated clip. Then it stops the worker and submits
# again to show the controller falling back to local execution. It prints
# where each receipt is and a short summary.
#
# Everything it makes lives under target/demo/ (state, media, logs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  say "checking tools (ffmpeg, espeak-ng, ...)"
  bash scripts/install_deps.sh
fi

say "building rayvault-worker and rayvault-orchestrator"
cargo build --bins --quiet
bin=$root/target/debug

demo=$root/target/demo
rm -rf "$demo"
mkdir -p "$demo/state/cluster" "$demo/media"
export RAYVAULT_STATE_DIR=$demo/state
# A secret only this run knows; it lives in the environment, never in argv.
RAYVAULT_CLUSTER_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export RAYVAULT_CLUSTER_SECRET

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
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
orch caps | head -c 1500; echo

submit() { # run_id job_id step payload
  local out
  out=$(orch submit --run-id "$1" --job-id "$2" --step-name "$3" --payload-json "$4") || {
    echo "$out"; echo "job $2 failed" >&2; exit 1; }
  printf '%s' "$out"
}
field() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }

say "TTS_RENDER_CHUNKS: a short voice-over script"
script="Welcome to RayVault. This demo renders speech on a worker. Then it checks the audio, probes a clip, and samples frames."
tts=$(submit demo_run tts_001 TTS_RENDER_CHUNKS "$(python3 -c 'import json,sys; print(json.dumps({"text": sys.argv[1], "max_chars": 60}))' "$script")")
chunks=$(printf '%s' "$tts" | field '" ".join(json.dumps(a["path"]) for a in r["artifacts"] if a["name"].endswith(".wav"))')
echo "rendered: $chunks"

say "AUDIO_POSTCHECK of the rendered chunks"
submit demo_run postcheck_001 AUDIO_POSTCHECK "{\"audio_paths\": [$(echo "$chunks" | sed 's/" "/", "/g')]}" \
  | field '"passed=%s\n" % r["result"]["passed"] + "\n".join("  %s: %s LUFS, true peak %s dBTP, problems %s" % (f.get("path","?").split("/")[-1], f.get("integrated_lufs"), f.get("true_peak_dbtp"), [p["code"] for p in f["problems"]] or "none") for f in r["result"]["files"])'

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
for job in tts_001 postcheck_001 ffprobe_001 frames_001 ffprobe_002; do
  r=$RAYVAULT_STATE_DIR/cluster/receipts/demo_run/$job/job_receipt.json
  python3 - "$r" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
where = r["executed_on"] + (" (fallback: %s)" % r["fallback_reason"] if r.get("fallback_reason") else "")
print("%-18s %-10s %-70s %d artifact(s)  %s" % (r["step_name"], r["status"], where[:70], len(r["artifacts"]), sys.argv[1]))
PY
done
