// The interop health server on grpc-js: grpc-health-check's HealthImplementation,
// and grpc-js's own ORCA service (ServerMetricRecorder) for out-of-band load reports.
//
// The command line and the stdin commands are the same for every stack, except
// `utilization`, which only this one has; see tests/interop/README.md.
'use strict';

const fs = require('fs');
const readline = require('readline');
const grpc = require('@grpc/grpc-js');
const { HealthImplementation } = require('grpc-health-check');

// How long a graceful stop lets calls finish before cancelling them (Watch streams
// never finish on their own).
const GRACE_MS = 1000;
const STATUSES = new Set(['SERVING', 'NOT_SERVING']);
// The `utilization` command's metrics, each to the recorder's setter for it.
const UTILIZATIONS = new Map([
  ['cpu', (recorder, value) => recorder.setCpuUtilizationMetric(value)],
  ['application', (recorder, value) => recorder.setApplicationUtilizationMetric(value)],
]);

function fail(message) {
  process.stderr.write(`${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const args = { port: null, services: [], tls: null, maxStreams: null, maxConnectionAgeMs: null };
  for (let i = 0; i < argv.length; i++) {
    switch (argv[i]) {
      case '--port': args.port = Number(argv[++i]); break;
      case '--services': args.services = argv[++i].split(',').filter((name) => name); break;
      case '--tls': args.tls = [argv[++i], argv[++i]]; break;
      case '--max-streams': args.maxStreams = Number(argv[++i]); break;
      case '--max-connection-age-ms': args.maxConnectionAgeMs = Number(argv[++i]); break;
      default: fail(`unknown argument ${argv[i]}`);
    }
  }
  if (!Number.isInteger(args.port)) fail('--port N is required');
  return args;
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const known = new Set(['', ...args.services]);
  const statuses = {};
  for (const service of known) statuses[service] = 'SERVING';
  const health = new HealthImplementation(statuses);

  const options = {};
  if (args.maxStreams !== null) options['grpc.max_concurrent_streams'] = args.maxStreams;
  if (args.maxConnectionAgeMs !== null) {
    options['grpc.max_connection_age_ms'] = args.maxConnectionAgeMs;
    // How long calls may go on after a connection reached its maximum age.
    options['grpc.max_connection_age_grace_ms'] = 1000;
  }
  const server = new grpc.Server(options);
  health.addToServer(server);
  // Reports carry what the `utilization` command last set (nothing until then), every
  // report_interval the client asks for.
  const recorder = new grpc.ServerMetricRecorder();
  recorder.addToServer(server);

  let credentials = grpc.ServerCredentials.createInsecure();
  if (args.tls) {
    const [certPath, keyPath] = args.tls;
    credentials = grpc.ServerCredentials.createSsl(
      null,
      [{ cert_chain: fs.readFileSync(certPath), private_key: fs.readFileSync(keyPath) }],
      false,
    );
  }
  server.bindAsync(`127.0.0.1:${args.port}`, credentials, (error, port) => {
    if (error) fail(`cannot listen on 127.0.0.1:${args.port}: ${error.message}`);
    process.stdout.write(`listening ${port}\n`);
    serveCommands(server, health, recorder, known);
  });
}

function serveCommands(server, health, recorder, known) {
  const lines = readline.createInterface({ input: process.stdin });
  let stopping = false;
  lines.on('line', (line) => {
    if (stopping) return;
    const words = line.trim().split(/\s+/);
    if (words[0] === 'set' && words.length === 3 && STATUSES.has(words[2])) {
      const service = words[1] === '-' ? '' : words[1];
      known.add(service);
      health.setStatus(service, words[2]);
      process.stdout.write('ok\n');
    } else if (words[0] === 'utilization' && words.length === 3 && UTILIZATIONS.has(words[1])) {
      const value = Number(words[2]);
      if (!Number.isFinite(value) || value < 0) fail(`utilization ${words[2]}: not a number >= 0`);
      UTILIZATIONS.get(words[1])(recorder, value);
      process.stdout.write('ok\n');
    } else if (words.length === 1 && words[0] === 'stop') {
      stopping = true;
      // HealthImplementation has no shutdown of its own: say NOT_SERVING to every
      // watcher, as the other stacks' health services do when their server stops.
      for (const service of known) health.setStatus(service, 'NOT_SERVING');
      const force = setTimeout(() => server.forceShutdown(), GRACE_MS);
      server.tryShutdown(() => {
        clearTimeout(force);
        process.stdout.write('ok\n', () => process.exit(0));
      });
    } else {
      fail(`unknown command ${JSON.stringify(line)}`);
    }
  });
  lines.on('close', () => {
    if (!stopping) process.exit(0);
  });
}

main();
