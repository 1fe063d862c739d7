#!/usr/bin/env node
// Send one case notice through a Liaison Exchange node's local API, from Node.js.
//
//   node send.js --credential DIR --p12 FILE --p12-passphrase-file PASSFILE --to PEER \
//       --case-ref REF --subject TEXT --body-file FILE
//
// DIR is a credential folder (ca.crt, target); FILE is the same credential as the PKCS#12
// file that `liaison users export NAME --to FILE --passphrase-to PASSFILE` writes, under
// the random passphrase it writes to PASSFILE (not the credential's passphrase).
// Prints {"message_id", "state"} as JSON, like `liaison send --json`, and exits with the
// CLI's codes (2 usage, 3 node unreachable, 4 refused, 6 not delivered, 8 not allowed).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const tls = require('node:tls');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// The project's .proto files; google/protobuf/timestamp.proto comes with proto-loader.
const PROTO_DIR = path.join(__dirname, '..', '..', 'proto');
// The name in the node's API certificate (keys/credentials.py API_SERVER_NAME): the
// target is an address, so TLS is told which name to check.
const API_SERVER_NAME = 'localhost';
const TIMEOUT_SECONDS = 30;
const RETRIES = 2;

function fail(code, message) {
  process.stderr.write(`send.js: ${message}\n`);
  process.exit(code);
}

function read(file, encoding) {
  try {
    return fs.readFileSync(file, encoding);
  } catch (error) {
    return fail(2, `cannot read ${file}: ${error.message}`);
  }
}

function options() {
  const required = [
    'credential',
    'p12',
    'p12-passphrase-file',
    'to',
    'case-ref',
    'subject',
    'body-file',
  ];
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        ...Object.fromEntries(required.map((name) => [name, { type: 'string' }])),
        category: { type: 'string', default: 'other' },
        tlp: { type: 'string', default: 'amber' },
        priority: { type: 'string', default: 'routine' },
        wait: { type: 'string', default: '10' },
        'idempotency-key': { type: 'string', default: `node-${crypto.randomUUID()}` },
      },
    }));
  } catch (error) {
    fail(2, error.message);
  }
  for (const name of required) {
    if (!values[name]) fail(2, `--${name} is required`);
  }
  if (!/^[0-9]+$/.test(values.wait)) fail(2, '--wait must be a whole number of seconds');
  return values;
}

// The PKCS#12 file's passphrase: the whole file, less one line ending if an editor added
// one. Refused if others may read it, as Liaison refuses its own passphrase files.
function p12Passphrase(file) {
  let mode;
  try {
    ({ mode } = fs.statSync(file));
  } catch (error) {
    return fail(2, `cannot read ${file}: ${error.message}`);
  }
  if (process.platform !== 'win32' && mode & 0o077) {
    const octal = (mode & 0o777).toString(8);
    fail(2, `passphrase file ${file} is accessible to others (mode ${octal}); chmod 600 it`);
  }
  const passphrase = read(file, 'utf8').replace(/\r?\n$/, '');
  if (!passphrase) fail(2, `passphrase file ${file} is empty`);
  return passphrase;
}

// Mutual TLS: the client key and certificate from the PKCS#12 file. The node's API
// certificate is checked against the node's CA only: ca.crt (and the CA in the PKCS#12
// file, which Node adds; the same one). Without `ca`, Node would trust its public roots too.
function tlsContext(folder, file, passphraseFile) {
  const passphrase = p12Passphrase(passphraseFile);
  const ca = read(path.join(folder, 'ca.crt'));
  const pfx = read(file);
  try {
    return tls.createSecureContext({ ca, pfx, passphrase });
  } catch (error) {
    const why = error.message;
    return fail(2, `${file} does not open with the passphrase in ${passphraseFile}: ${why}`);
  }
}

const args = options();
const definition = protoLoader.loadSync('liaison/v1/node.proto', {
  includeDirs: [PROTO_DIR],
  keepCase: true, // field names as in the .proto: case_reference, message_id
  enums: String, // enum values by name: "TLP_AMBER", "MESSAGE_STATE_DELIVERED"
  defaults: true,
});
const liaison = grpc.loadPackageDefinition(definition).liaison.v1;

// "amber+strict" -> "TLP_AMBER_STRICT", checked against the enum in notice.proto.
function enumName(type, prefix, text) {
  const name = prefix + text.toUpperCase().replace(/[-+]/g, '_');
  const known = definition[`liaison.v1.${type}`].type.value.map((value) => value.name);
  if (!known.includes(name) || name.endsWith('_UNSPECIFIED')) fail(2, `unknown ${type} ${text}`);
  return name;
}

const request = {
  recipient: args.to,
  notice: {
    case_reference: args['case-ref'],
    category: enumName('Category', 'CATEGORY_', args.category),
    handling: enumName('Tlp', 'TLP_', args.tlp),
    priority: enumName('Priority', 'PRIORITY_', args.priority),
    subject: args.subject,
    body: read(args['body-file'], 'utf8'),
  },
  wait_seconds: Number(args.wait),
  // One key per notice, sent again unchanged on a retry: the node then answers with the
  // notice it queued the first time instead of queuing a second copy.
  idempotency_key: args['idempotency-key'],
};

const folder = args.credential;
const context = tlsContext(folder, args.p12, args['p12-passphrase-file']);
const credentials = grpc.credentials.createFromSecureContext(context);
const target = read(path.join(folder, 'target'), 'utf8').trim(); // host:port
const client = new liaison.NodeService(target, credentials, {
  'grpc.ssl_target_name_override': API_SERVER_NAME,
});

const TRANSIENT = [grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED];
const EXIT_CODES = {
  [grpc.status.UNAVAILABLE]: 3,
  [grpc.status.DEADLINE_EXCEEDED]: 3,
  [grpc.status.INVALID_ARGUMENT]: 4,
  [grpc.status.RESOURCE_EXHAUSTED]: 4,
  [grpc.status.PERMISSION_DENIED]: 8,
  [grpc.status.UNAUTHENTICATED]: 8,
};

function send(attempt) {
  const deadline = new Date(Date.now() + (TIMEOUT_SECONDS + request.wait_seconds) * 1000);
  client.SendNotice(request, { deadline }, (error, response) => {
    if (error && TRANSIENT.includes(error.code) && attempt < RETRIES) {
      send(attempt + 1); // the same request, so the same idempotency key
      return;
    }
    client.close();
    if (error) fail(EXIT_CODES[error.code] ?? 1, `${grpc.status[error.code]}: ${error.details}`);
    const state = response.state.replace(/^MESSAGE_STATE_/, '').toLowerCase();
    const result = { message_id: response.message_id, state };
    if (response.reason) result.reason = response.reason;
    process.stdout.write(`${JSON.stringify(result)}\n`);
    // Failed (the peer refused it) or expired: not delivered, and never will be.
    if (state === 'failed' || state === 'expired') process.exitCode = 6;
  });
}

send(0);
