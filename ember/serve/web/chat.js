// The chat playground: conversations, streamed answers, stop/regenerate, per-answer speed.

import { ApiError, streamChat } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import {
  loadConversations,
  loadSettings,
  newConversation,
  saveConversations,
  saveSettings,
} from "./store.js";

const $ = (id) => document.getElementById(id);
const SETTING_FIELDS = ["system", "temperature", "top_p", "top_k", "max_tokens", "seed", "stop"];

// Settings form -> the request's sampling fields; empty fields are left to the server's defaults.
export function samplingFields(settings) {
  const body = {};
  const number = (name, parse) => {
    const text = String(settings[name] ?? "").trim();
    if (text === "") return;
    const value = parse(text);
    if (Number.isNaN(value)) throw new Error(`${name.replace("_", " ")} must be a number, got "${text}"`);
    body[name] = value;
  };
  number("temperature", Number);
  number("top_p", Number);
  number("top_k", (t) => (/^-?\d+$/.test(t) ? Number(t) : NaN));
  number("max_tokens", (t) => (/^\d+$/.test(t) ? Number(t) : NaN));
  number("seed", (t) => (/^\d+$/.test(t) ? Number(t) : NaN));
  const stop = String(settings.stop ?? "")
    .split("\n")
    .filter((s) => s !== "");
  if (stop.length) body.stop = stop;
  return body;
}

function describeStats(stats) {
  const parts = [];
  if (stats.completion_tokens != null) parts.push(`${stats.approximate ? "≈" : ""}${stats.completion_tokens} tokens`);
  if (stats.tokens_per_s != null) parts.push(`${stats.tokens_per_s.toFixed(1)} tok/s`);
  if (stats.ttft_ms != null) parts.push(`TTFT ${Math.round(stats.ttft_ms)} ms`);
  if (stats.prompt_tokens != null) parts.push(`prompt ${stats.prompt_tokens}`);
  if (stats.finish_reason) parts.push(stats.finish_reason);
  return parts.join(" · ");
}

export class Chat {
  constructor({ onNeedKey, modelName }) {
    this.onNeedKey = onNeedKey;
    this.modelName = modelName; // () -> the served model's id, or undefined
    this.conversations = loadConversations();
    this.current = this.conversations[0] || null;
    this.controller = null; // the AbortController of the answer being streamed
    this.settings = loadSettings();
    this.bindSettings();
    this.bindComposer();
    this.renderList();
    this.renderMessages();
  }

  // --- settings ----------------------------------------------------------------------------
  bindSettings() {
    for (const name of SETTING_FIELDS) {
      const input = $(name);
      input.value = this.settings[name];
      input.addEventListener("input", () => {
        this.settings[name] = input.value;
        saveSettings(this.settings);
      });
    }
    $("reset-settings").addEventListener("click", () => {
      localStorage.removeItem("ember.settings");
      this.settings = loadSettings();
      for (const name of SETTING_FIELDS) $(name).value = this.settings[name];
    });
  }

  // --- composer ----------------------------------------------------------------------------
  bindComposer() {
    const prompt = $("prompt");
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      this.send(prompt.value);
    });
    prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send(prompt.value);
      }
    });
    $("stop-generation").addEventListener("click", () => this.stop());
    $("regenerate").addEventListener("click", () => this.regenerate());
    $("new-chat").addEventListener("click", () => {
      this.stop();
      this.current = null;
      this.renderList();
      this.renderMessages();
      prompt.focus();
    });
  }

  setBusy(busy) {
    $("send").hidden = busy;
    $("stop-generation").hidden = !busy;
    $("regenerate").disabled = busy;
  }

  send(text) {
    if (this.controller || !text.trim()) return;
    if (!this.current) {
      this.current = newConversation();
      this.conversations.unshift(this.current);
    }
    const conversation = this.current;
    if (conversation.messages.length === 0) conversation.title = text.trim().slice(0, 60);
    conversation.messages.push({ role: "user", content: text });
    $("prompt").value = "";
    this.renderList();
    this.answer(conversation);
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  regenerate() {
    const conversation = this.current;
    if (this.controller || !conversation || conversation.messages.length === 0) return;
    if (conversation.messages.at(-1).role === "assistant") conversation.messages.pop();
    this.answer(conversation);
  }

  // Streams one answer into a new assistant message at the end of `conversation`.
  async answer(conversation) {
    let sampling;
    try {
      sampling = samplingFields(this.settings);
    } catch (err) {
      this.showError(err.message);
      return;
    }
    const history = conversation.messages.map(({ role, content }) => ({ role, content }));
    const system = this.settings.system.trim();
    const messages = system ? [{ role: "system", content: system }, ...history] : history;
    const message = { role: "assistant", content: "", stats: {} };
    conversation.messages.push(message);
    this.renderMessages();
    const view = $("messages").lastElementChild;
    view.classList.add("streaming");

    const controller = (this.controller = new AbortController());
    this.setBusy(true);
    const started = performance.now();
    let first = null;
    let chunks = 0;
    let usage = null;
    let pending = false;
    const repaint = () => {
      // at most one Markdown pass per frame, however fast tokens come
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        this.fillMessage(view, message);
        this.scrollToEnd();
      });
    };
    try {
      const body = { messages, stream_options: { include_usage: true }, ...sampling };
      const model = this.modelName();
      if (model) body.model = model;
      for await (const chunk of streamChat(body, controller.signal)) {
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          const text = choice.delta?.content;
          if (text !== undefined && text !== null && (text !== "" || choice.delta.role === undefined)) {
            first ??= performance.now();
            chunks += 1;
            message.content += text;
            repaint();
          }
          if (choice.finish_reason) message.stats.finish_reason = choice.finish_reason;
        }
      }
    } catch (err) {
      if (err.name === "AbortError") {
        message.stats.finish_reason = "stopped";
      } else {
        message.stats.finish_reason = "error";
        message.error = err.message;
        if (err instanceof ApiError && err.needsKey) this.onNeedKey(err.message);
      }
    } finally {
      const ended = performance.now();
      // One chunk per sampled token: a fair count when the server sent no usage (stopped).
      message.stats.completion_tokens = usage ? usage.completion_tokens : chunks;
      message.stats.approximate = !usage;
      if (usage) message.stats.prompt_tokens = usage.prompt_tokens;
      if (first !== null) {
        message.stats.ttft_ms = first - started;
        // decode speed: the tokens after the first over the time after it
        const decodeSeconds = (ended - first) / 1000;
        if (message.stats.completion_tokens > 1 && decodeSeconds > 0) {
          message.stats.tokens_per_s = (message.stats.completion_tokens - 1) / decodeSeconds;
        }
      }
      this.controller = null;
      this.setBusy(false);
      view.classList.remove("streaming");
      this.fillMessage(view, message);
      saveConversations(this.conversations);
    }
  }

  showError(text) {
    const box = $("chat-error");
    box.textContent = text;
    box.hidden = !text;
  }

  // --- rendering ---------------------------------------------------------------------------
  renderList() {
    const list = $("conversation-list");
    list.replaceChildren();
    for (const conversation of this.conversations) {
      const item = document.createElement("li");
      item.classList.toggle("current", conversation === this.current);
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      open.textContent = conversation.title;
      open.title = conversation.title;
      open.addEventListener("click", () => {
        if (this.controller) return; // finish or stop the answer first
        this.current = conversation;
        this.renderList();
        this.renderMessages();
      });
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "delete";
      remove.textContent = "×";
      remove.title = "Delete this conversation";
      remove.addEventListener("click", () => {
        if (conversation === this.current) {
          this.stop();
          this.current = null;
        }
        this.conversations = this.conversations.filter((c) => c !== conversation);
        saveConversations(this.conversations);
        this.renderList();
        this.renderMessages();
      });
      item.append(open, remove);
      list.append(item);
    }
  }

  renderMessages() {
    this.showError("");
    const box = $("messages");
    box.replaceChildren();
    const messages = this.current ? this.current.messages : [];
    if (messages.length === 0) {
      const hint = document.createElement("p");
      hint.className = "empty";
      hint.textContent = "Ask something. Answers stream from this server's /v1/chat/completions.";
      box.append(hint);
    }
    for (const message of messages) {
      const view = document.createElement("article");
      view.className = `message ${message.role === "user" ? "user" : "assistant"}`;
      this.fillMessage(view, message);
      box.append(view);
    }
    this.scrollToEnd();
  }

  fillMessage(view, message) {
    const content = document.createElement("div");
    content.className = "content";
    if (message.role === "assistant") content.append(renderMarkdown(message.content));
    else content.textContent = message.content; // the user's words, as typed
    const parts = [content];
    if (message.error) {
      const error = document.createElement("p");
      error.className = "error";
      error.textContent = message.error;
      parts.push(error);
    }
    if (message.stats && message.stats.finish_reason) {
      const stats = document.createElement("footer");
      stats.className = "answer-stats";
      stats.textContent = describeStats(message.stats);
      for (const [key, value] of Object.entries(message.stats)) {
        if (value !== undefined && value !== null) stats.dataset[key.replace(/_(.)/g, (_, c) => c.toUpperCase())] = value;
      }
      parts.push(stats);
    }
    view.replaceChildren(...parts);
  }

  scrollToEnd() {
    const box = $("messages");
    box.scrollTop = box.scrollHeight;
  }
}
