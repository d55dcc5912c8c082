// Submit a request to cadre and follow its workflow's events, from Node.js with nats.js.
//
//   npm install                     # in this folder: @nats-io/transport-node, @nats-io/jetstream
//   node submit_and_follow.mjs URL CREDS "find the three customers who spent most in 2024 and write a report"
//
// URL is the NATS server `cadre up` printed ("other NATS clients: URL with the credentials in …"),
// CREDS the client credentials it named (.cadre/auth/client.creds locally; a deployment's
// client.creds remotely). A client may send requests and read events; it cannot write them.
//
// It prints the workflow id, then one line per event (stream sequence, type) as the workflow runs,
// and, at its end, the result (workflow_completed) or the reason (workflow_failed) as JSON.
// Exit code: 0 completed, 1 failed (or an error), 2 bad arguments.

import { readFileSync } from "node:fs";
import { connect, credsAuthenticator } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";

// JSON.stringify escapes the C0 controls but not DEL, the C1 controls (U+0080 to U+009F, which some
// terminals obey as ESC sequences) or the zero-width and bidi characters: escape those too, so that
// recorded text in an event prints inert.
const inert = (text) =>
  text.replace(/[\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2066-\u2069]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);

// One recorded field for a line of text: escaped as in JSON, without the quotes.
const field = (value) => inert(JSON.stringify(String(value)).slice(1, -1));

const [url, credsFile, request] = process.argv.slice(2);
if (!url || !credsFile || !request) {
  console.error('usage: node submit_and_follow.mjs URL CREDS "REQUEST"');
  process.exit(2);
}

const nc = await connect({ servers: url, authenticator: credsAuthenticator(readFileSync(credsFile)) });
try {
  // The request: {"request": ...} (or {"plan": ...}; see the README for every field). The answer is
  // {"workflow_id": ...} or {"error": {"code", "message", "path"}}. Ask with a timeout of 5 s or more.
  const reply = await nc.request("cadre.requests", JSON.stringify({ request }), { timeout: 10_000 });
  const answer = reply.json();
  if (answer.error) {
    console.error(`refused: ${field(answer.error.code)}: ${field(answer.error.message)}`);
    process.exitCode = 1;
  } else {
    const wf = answer.workflow_id;
    console.log(`workflow ${field(wf)}`);
    // The events: an ordered consumer on the event stream, filtered on the workflow's subjects. Every
    // event is a JSON envelope {id, type, workflow_id, causation_id, actor, at, data, ...}.
    const consumer = await jetstream(nc).consumers.get("CADRE_EVENTS", { filter_subjects: [`cadre.evt.${wf}.>`] });
    const messages = await consumer.consume();
    for await (const m of messages) {
      const event = m.json();
      console.log(`#${m.seq} ${field(event.type)}`);
      if (event.type === "workflow_completed" || event.type === "workflow_failed") {
        // The end as JSON, its recorded text escaped (inert, above).
        console.log(inert(JSON.stringify({ status: event.type.slice("workflow_".length), ...event.data })));
        process.exitCode = event.type === "workflow_completed" ? 0 : 1;
        break;
      }
    }
    await messages.close();
  }
} finally {
  await nc.drain();
}
