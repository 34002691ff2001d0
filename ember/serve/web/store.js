// What the page keeps in the browser (localStorage): conversations and sampling settings.

const CONVERSATIONS = "ember.conversations";
const SETTINGS = "ember.settings";

export const DEFAULT_SETTINGS = {
  system: "",
  temperature: 0.7,
  top_p: 1,
  top_k: 0,
  max_tokens: 256,
  seed: "",
  stop: "",
};

function read(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value ?? fallback;
  } catch (_) {
    return fallback; // corrupt or hand-edited: start afresh rather than break the page
  }
}

function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (err) {
    console.warn("could not save to localStorage (full or disabled):", err);
  }
}

export function loadSettings() {
  return { ...DEFAULT_SETTINGS, ...read(SETTINGS, {}) };
}

export function saveSettings(settings) {
  write(SETTINGS, settings);
}

// [{id, title, created, messages: [{role, content, stats?}]}], newest first.
export function loadConversations() {
  const list = read(CONVERSATIONS, []);
  return Array.isArray(list) ? list.filter((c) => c && Array.isArray(c.messages)) : [];
}

export function saveConversations(conversations) {
  write(CONVERSATIONS, conversations);
}

export function newConversation() {
  const id = crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random();
  return { id, title: "New chat", created: Date.now(), messages: [] };
}
