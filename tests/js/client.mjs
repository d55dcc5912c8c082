// A nats.js client of cadre holding only the client creds file (run by tests/test_natsjs.py).
//
//   node tests/js/client.mjs URL CREDS REQUEST [PREFIX] [STREAM]
//
// 1. sends REQUEST to <PREFIX>.requests and reads the workflow id from the reply;
// 2. follows <PREFIX>.evt.<wf>.> on STREAM (the readers' mirror) with an ordered consumer,
//    as nats.js does (`consumers.get(stream, {filter_subjects: [...]})`), until the workflow ends;
// 3. tries to forge <PREFIX>.evt.<wf>.workflow_completed, by a core publish and by a JetStream
//    publish, and reports what the server answered.
// Prints one JSON object per line: {"step": "reply" | "event" | "forge" | "jsforge" | "done" | "error", ...};
// "done" lists every permission violation the connection saw (the forges' included).
// Exit code 0 when every step ran (the caller judges what was seen), 1 on an error.

import { readFileSync } from "node:fs";
import { connect, credsAuthenticator } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";

const [url, credsFile, request, prefix = "cadre", stream = "CADRE_EVENTS"] = process.argv.slice(2);
if (!url || !credsFile || !request) {
  console.error("usage: node client.mjs URL CREDS REQUEST [PREFIX] [STREAM]");
  process.exit(2);
}

const FORGED_MARK = "forged-by-natsjs";
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

async function main() {
  const nc = await connect({
    servers: url,
    authenticator: credsAuthenticator(readFileSync(credsFile)),
    name: "cadre-natsjs-check",
    maxReconnectAttempts: 0,
  });
  // Refused publishes do not throw: the server's -ERR arrives as a status of type "error".
  const violations = [];
  (async () => {
    for await (const s of nc.status()) {
      if (s.type === "error") {
        violations.push({ name: s.error?.name, message: s.error?.message, subject: s.error?.subject });
      }
    }
  })();

  // 1. The request.
  const reply = await nc.request(`${prefix}.requests`, JSON.stringify({ request }), { timeout: 10_000 });
  const answer = reply.json();
  say({ step: "reply", reply: answer });
  const wf = answer.workflow_id;
  if (typeof wf !== "string") {
    throw new Error(`no workflow id in the reply: ${reply.string()}`);
  }

  // 2. Follow the workflow's events from the mirror until it ends.
  const js = jetstream(nc);
  const consumer = await js.consumers.get(stream, { filter_subjects: [`${prefix}.evt.${wf}.>`] });
  const messages = await consumer.consume();
  for await (const m of messages) {
    const event = m.json();
    say({ step: "event", seq: m.seq, subject: m.subject, type: event.type, id: event.id });
    if (event.type === "workflow_completed" || event.type === "workflow_failed") {
      break;
    }
  }
  await messages.close();

  // 3. Forge the end of the workflow: a core publish, then a JetStream publish.
  const forged = `${prefix}.evt.${wf}.workflow_completed`;
  const body = JSON.stringify({ type: "workflow_completed", note: FORGED_MARK });
  const before = violations.length;
  nc.publish(forged, body);
  await nc.flush();
  for (let i = 0; i < 40 && violations.length === before; i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  say({ step: "forge", subject: forged, violations: violations.slice(before) });
  try {
    const ack = await js.publish(forged, body, { timeout: 1500 });
    say({ step: "jsforge", subject: forged, acked: true, seq: ack.seq, stream: ack.stream });
  } catch (err) {
    say({ step: "jsforge", subject: forged, acked: false, error: err?.name, message: err?.message });
  }

  await nc.drain();
  say({ step: "done", mark: FORGED_MARK, violations });
}

const overall = setTimeout(() => {
  say({ step: "error", message: "timed out after 60 s" });
  process.exit(1);
}, 60_000);
overall.unref();

try {
  await main();
} catch (err) {
  say({ step: "error", name: err?.name, message: err?.message });
  process.exitCode = 1;
}
