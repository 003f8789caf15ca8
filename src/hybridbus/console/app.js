// The console's page: log in with a token, then one view at a time (tabs, `#view` in the URL).
//
// The token is kept in sessionStorage (this tab only, gone when it closes) and sent with every
// request; nothing else is stored. The live views (stream, publish) use the browser client over
// the WebSocket protocol, loaded from ./client/ only when first needed.

import { Api } from "./api.js";
import { say } from "./dom.js";
import { TopicsView } from "./views/topics.js";
import { StreamView } from "./views/stream.js";
import { PresenceView } from "./views/presence.js";
import { GroupsView } from "./views/groups.js";
import { DeadLettersView } from "./views/deadletters.js";
import { WebhooksView } from "./views/webhooks.js";
import { BridgesView } from "./views/bridges.js";
import { MetricsView } from "./views/metrics.js";
import { PublishView } from "./views/publish.js";

const KEY = "hybridbus.console.token";
const VIEWS = {
  topics: TopicsView,
  stream: StreamView,
  presence: PresenceView,
  groups: GroupsView,
  dead: DeadLettersView,
  webhooks: WebhooksView,
  bridges: BridgesView,
  metrics: MetricsView,
  publish: PublishView,
};
const $ = (id) => document.getElementById(id);

class Console {
  constructor(api) {
    this.api = api;
    this.client = null;
    this.connecting = null;
    this.current = null;
    this.views = {};
    for (const [name, View] of Object.entries(VIEWS)) {
      this.views[name] = new View(this, $(`view-${name}`));
    }
  }

  /** The browser client, connected with the token (made at the first live view). */
  async live() {
    if (!this.connecting) {
      this.connecting = (async () => {
        const { Client } = await import("./client/index.js");
        const scheme = location.protocol === "https:" ? "wss" : "ws";
        const client = new Client(`${scheme}://${location.host}/v1/ws`, { token: this.api.token });
        client.on("state", (state) => { $("live-state").textContent = `live: ${state}`; });
        await client.connect();
        this.client = client;
        return client;
      })();
      this.connecting.catch(() => { this.connecting = null; });
    }
    return this.connecting;
  }

  /** Show view `name`; `arg` opens it on a topic, pattern or group. */
  show(name, arg) {
    if (!(name in this.views)) name = "topics";
    if (this.current && this.current !== name) this.views[this.current].stop();
    for (const button of document.querySelectorAll("#tabs button")) {
      button.classList.toggle("active", button.dataset.view === name);
    }
    for (const section of document.querySelectorAll(".view")) {
      section.hidden = section.id !== `view-${name}`;
    }
    const view = this.views[name];
    if (arg !== undefined) view.open?.(arg);
    if (this.current !== name || arg !== undefined) {
      this.current = name;
      view.start();
    }
    if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  }

  close() {
    if (this.current) this.views[this.current].stop();
    this.client?.close();
  }
}

async function login(token) {
  const api = new Api(token);
  await api.identify(); // 401 for a token the server does not take
  sessionStorage.setItem(KEY, token);
  const who = api.who;
  $("who").textContent = `${who.user ?? "anonymous"} · ${who.admin ? "admin" : `tenant ${who.tenant}`}` +
    (who.roles.length ? ` · ${who.roles.join(", ")}` : "");
  $("login").hidden = true;
  $("console").hidden = false;
  $("logout").hidden = false;
  const app = new Console(api);
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => app.show(button.dataset.view));
  }
  app.show(location.hash.slice(1) || "topics");
  window.hybridbusConsole = app; // for the browser's devtools
  document.body.dataset.state = "ready";
  return app;
}

function logout() {
  sessionStorage.removeItem(KEY);
  window.hybridbusConsole?.close();
  location.replace(location.pathname); // a fresh page: nothing of the session stays in memory
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  say($("login-status"), "checking…");
  try {
    await login(token);
    $("token").value = "";
  } catch (error) {
    say($("login-status"), `not logged in: ${error.message}`, "error");
  }
});
$("logout").addEventListener("click", logout);

const saved = sessionStorage.getItem(KEY);
if (saved) {
  login(saved).catch((error) => {
    sessionStorage.removeItem(KEY);
    say($("login-status"), `the saved token was refused: ${error.message}`, "error");
    document.body.dataset.state = "login";
  });
} else {
  document.body.dataset.state = "login";
}
