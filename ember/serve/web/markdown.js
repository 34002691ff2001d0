// A small Markdown renderer that builds DOM nodes and never parses HTML.
//
// Model output is untrusted: every piece of it reaches the page through textContent or
// createTextNode, so `<img src=x onerror=...>` shows as those characters. Links keep only
// http(s) targets (no javascript: or data: URLs). What it knows: fenced code blocks
// (``` or ~~~, unclosed ones too, as a stream leaves them), headings, bullet and numbered
// lists, block quotes, rules, paragraphs; inline code, **bold** (__bold__ between word
// boundaries, so snake__case names stay text), *italic*, [text](url).

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const INLINE =
  /(`+)([\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|(?<!\w)__(?=\S)([\s\S]*?\S)__(?!\w)|\*(?=[^\s*])([\s\S]*?[^\s*])\*|\[([^\]\n]+)\]\(([^()\s]+)\)/g;

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

function safeUrl(text) {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch (_) {
    return null;
  }
}

// Inline spans of one block's text, appended to `parent` as nodes.
export function renderInline(text, parent) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
    last = m.index + m[0].length;
    if (m[1] !== undefined) {
      const code = el("code");
      code.textContent = m[2].length > 2 && m[2].startsWith(" ") && m[2].endsWith(" ") ? m[2].slice(1, -1) : m[2];
      parent.append(code);
    } else if (m[3] !== undefined || m[4] !== undefined) {
      renderInline(m[3] ?? m[4], parent.appendChild(el("strong")));
    } else if (m[5] !== undefined) {
      renderInline(m[5], parent.appendChild(el("em")));
    } else {
      const href = safeUrl(m[7]);
      if (href === null) {
        parent.append(document.createTextNode(m[0]));
        continue;
      }
      const a = el("a");
      a.href = href;
      a.target = "_blank";
      a.rel = "noopener noreferrer nofollow";
      a.textContent = m[6];
      parent.append(a);
    }
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
  return parent;
}

function codeBlock(lang, lines) {
  const figure = el("figure", "code-block");
  const caption = el("figcaption");
  const label = el("span", "code-lang");
  label.textContent = lang || "code";
  const copy = el("button", "copy");
  copy.type = "button";
  copy.textContent = "Copy";
  const source = lines.join("\n");
  copy.addEventListener("click", () => {
    navigator.clipboard?.writeText(source).then(
      () => (copy.textContent = "Copied"),
      () => (copy.textContent = "Copy failed"),
    );
  });
  caption.append(label, copy);
  const pre = el("pre");
  const code = el("code");
  if (lang) code.dataset.lang = lang;
  code.textContent = source;
  pre.append(code);
  figure.append(caption, pre);
  return figure;
}

// The whole text -> a DocumentFragment of block elements.
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let paragraph = [];
  let list = null; // {node, ordered}
  let quote = [];

  const flushParagraph = () => {
    if (paragraph.length) out.append(renderInline(paragraph.join("\n"), el("p")));
    paragraph = [];
  };
  const flushQuote = () => {
    if (quote.length) {
      const block = el("blockquote");
      block.append(renderMarkdown(quote.join("\n")));
      out.append(block);
    }
    quote = [];
  };
  const flushAll = () => {
    flushParagraph();
    flushQuote();
    list = null;
  };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    let m;
    if ((m = FENCE.exec(line))) {
      flushAll();
      const fence = m[1];
      const body = [];
      for (i++; i < lines.length; i++) {
        if (lines[i].trim().startsWith(fence[0].repeat(fence.length)) && lines[i].trim().replace(/[`~]/g, "") === "") break;
        body.push(lines[i]);
      }
      out.append(codeBlock(m[2], body));
    } else if ((m = QUOTE.exec(line))) {
      flushParagraph();
      list = null;
      quote.push(m[1]);
    } else if (line.trim() === "") {
      flushAll();
    } else if (RULE.test(line)) {
      flushAll();
      out.append(el("hr"));
    } else if ((m = HEADING.exec(line))) {
      flushAll();
      // h1/h2 in a chat bubble shout; start at h3
      out.append(renderInline(m[2], el(`h${Math.min(6, m[1].length + 2)}`)));
    } else if ((m = BULLET.exec(line)) || (m = NUMBERED.exec(line))) {
      flushParagraph();
      flushQuote();
      const ordered = m.length === 3;
      if (!list || list.ordered !== ordered) {
        list = { node: el(ordered ? "ol" : "ul"), ordered };
        if (ordered && m[1] !== "1") list.node.start = Number(m[1]);
        out.append(list.node);
      }
      list.node.append(renderInline(ordered ? m[2] : m[1], el("li")));
    } else if (list && /^\s+\S/.test(line)) {
      // an indented line continues the list item above it
      const item = list.node.lastElementChild;
      item.append(document.createTextNode("\n"));
      renderInline(line.trim(), item);
    } else {
      flushQuote();
      list = null;
      paragraph.push(line);
    }
  }
  flushAll();
  return out;
}
