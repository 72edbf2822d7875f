#!/usr/bin/env bash
# The whole benchmark suite, in a few minutes on 2 cores. Figures go to standard output;
# BENCHMARKS.md records them with these commands. Usage: examples/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --bin haproxy-grpc-agent --example loadgen --example scale
scale=target/release/examples/scale
ls -l target/release/haproxy-grpc-agent

echo "== 1. cached answers vs the constant-up ceiling, 1000 targets"
target/release/examples/loadgen --targets 1000 --concurrency 32 --duration 5s --rounds 2
echo "== 2-4. probe ratio, probe cost, lag, memory: 1k and 10k targets at 1 s"
"$scale" --backends 1000 --services 1 --interval 1s --window 10s
"$scale" --backends 5000 --services 2 --interval 1s --window 10s
echo "== 4. 50k and 100k targets at 10 s"
"$scale" --backends 500 --services 100 --interval 10s --window 20s
"$scale" --backends 1000 --services 100 --interval 10s --window 20s
echo "== 5. cold start: 1000 unseen targets at once"
"$scale" --backends 1000 --services 1 --cold 64
echo "== 6. detection latency, default interval and rise/fall: poll, watch, watch with --trust-watch"
"$scale" --backends 200 --services 1 --interval 2s --detect
echo "== 7. seed limits: start-up, RSS at 100 requests/s"
"$scale" --backends 100 --services 1 --interval 2s --window 10s --rate 100
