// The page's entry point: the two views (chat, dashboard), the API key dialog, the model name.

import { apiKey, getJSON, setApiKey } from "./api.js";
import { Chat } from "./chat.js";
import { Dashboard } from "./dashboard.js";

const $ = (id) => document.getElementById(id);

let modelName;
const dashboard = new Dashboard();

function showView(name) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const selected = tab.dataset.view === name;
    tab.setAttribute("aria-selected", String(selected));
    $(`view-${tab.dataset.view}`).hidden = !selected;
  }
  dashboard.show(name === "dashboard");
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
}

// Asks for the API key (`ember serve --api-key`); `reason` says why it is asked again.
function askForKey(reason = "") {
  const dialog = $("key-dialog");
  $("key-reason").textContent = reason;
  $("key-input").value = apiKey();
  if (!dialog.open) dialog.showModal();
}

async function loadModelName() {
  try {
    const models = await getJSON("/v1/models");
    modelName = models.data[0]?.id;
    $("model-name").textContent = modelName || "";
  } catch (err) {
    if (err.needsKey) askForKey(apiKey() ? "The server refused this key." : "This server needs an API key.");
    else $("model-name").textContent = `server: ${err.message}`;
  }
}

function bindKeyDialog() {
  const dialog = $("key-dialog");
  $("key-button").addEventListener("click", () => askForKey());
  dialog.addEventListener("close", () => {
    if (dialog.returnValue === "save") {
      setApiKey($("key-input").value.trim());
      loadModelName();
    }
  });
}

for (const tab of document.querySelectorAll("[role=tab]")) {
  tab.addEventListener("click", () => showView(tab.dataset.view));
}
bindKeyDialog();
new Chat({ onNeedKey: (message) => askForKey(message), modelName: () => modelName });
showView(location.hash === "#dashboard" ? "dashboard" : "chat");
// narrow screens start with the settings folded away, leaving the room to the conversation
if (window.matchMedia("(max-width: 800px)").matches) $("settings").open = false;
loadModelName();
document.body.dataset.ready = "true"; // tests wait for this
