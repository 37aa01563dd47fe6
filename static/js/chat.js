// The chat page. No inline script anywhere (CSP script-src 'self'): configuration and
// translated strings come from the json_script element "chat-config".
// Message text is always inserted as text; only the server's sanitized HTML ("html" from the
// API) is ever set as innerHTML.
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("chat-config").textContent);
  const S = config.strings;
  const $ = (id) => document.getElementById(id);
  const el = {
    chat: $("chat"), list: $("conversation-list"), filter: $("conversation-filter"), newBtn: $("new-conversation"),
    title: $("chat-title"), picker: $("model-picker"), messages: $("messages"), empty: $("empty-state"),
    input: $("message-input"), composer: $("composer"), send: $("send-button"), stop: $("stop-button"),
    regen: $("regenerate-button"), status: $("connection-status"), error: $("chat-error"),
    settingsToggle: $("settings-toggle"), settings: $("settings-panel"), settingsClose: $("settings-close"), systemPrompt: $("system-prompt"),
    temperature: $("temperature"), maxTokens: $("max-tokens"), settingsError: $("settings-error"),
    sidebar: $("sidebar"), sidebarOpen: $("sidebar-open"), sidebarClose: $("sidebar-close"),
    announcer: $("reply-announcer"), downloads: $("chat-downloads"), downloadMd: $("download-md"), downloadJson: $("download-json"),
  };

  const state = {
    conversation: config.conversation,
    conversations: config.conversations,
    nextConversations: config.conversationsNext, // the API's next page of the list, or null
    messages: config.messages, // as the API returns them
    socket: null,
    retry: 0,
    running: null, // id of the reply being streamed
    // client_id -> {conversationId, frame}: resent after a reconnect (idempotent on client_id),
    // and only on a socket of the conversation it was written in.
    unacked: new Map(),
    // Stop and Regenerate clicked while the socket was not open (a blip, a reconnect): frame
    // type -> conversation id, sent when a socket of that conversation opens. A click is never
    // dropped between two sockets: a Stop lost there would let the reply (and its cost) run on.
    controls: new Map(),
    signedOut: false, // the session ended: nothing is sent or reconnected until they sign in
    // Messages given back into the input unacknowledged, each with the client_id it went out
    // with: {conversationId, sent: [{content, clientId}]}. Their ack may only have been lost.
    givenBack: null,
    frames: 0, // frames handled so far; a message keeps the count at its last one as m.seen
  };

  function fmt(template, values) {
    return template.replace(/%\((\w+)\)s/g, (_m, key) => String(values[key]));
  }

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  async function api(method, url, body) {
    const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    if (method !== "GET") options.headers["X-CSRFToken"] = csrfToken();
    let response;
    try {
      response = await fetch(url, options);
    } catch (_err) {
      throw new Error(S.offline); // the browser's own text ("Failed to fetch") is not translated
    }
    if (response.status === 401) signedOut();
    if (response.status === 204) return null;
    // An error page that is not JSON (a proxy's 502, say) still gets a readable message.
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const err = new Error((data.error && data.error.message) || S.requestFailed);
      err.status = response.status;
      throw err;
    }
    return data;
  }

  function showError(message) {
    if (state.signedOut) return; // the way back in stays in view: nothing else works before it
    el.error.textContent = message || "";
    el.error.hidden = !message;
  }

  // An error one action showed (a refused rename, a failed filter) is taken away by that
  // action's next success, if it is still the one in view; another action's error stays.
  const shownBy = {};

  function showErrorOf(action, message) {
    shownBy[action] = message;
    showError(message);
  }

  function clearErrorOf(action) {
    if (shownBy[action] !== undefined && el.error.textContent === shownBy[action]) showError("");
    delete shownBy[action];
  }

  // The header and the browser tab both name the open conversation, as the server renders them.
  function showTitle(title) {
    el.title.textContent = title || S.untitled;
    document.title = (title || S.untitled) + " · Parley";
  }

  // --- sidebar -----------------------------------------------------------------------------
  // The list is drawn anew at each change (a rename, a reply's new title, a filter): the control
  // that had the keyboard's focus gets it back, the same one of the same conversation, else the
  // link of the one now in its place. Without this the focus fell on the page's body.
  function listFocus() {
    const focused = document.activeElement;
    const li = el.list.contains(focused) ? focused.closest("li") : null;
    return li ? { id: li.dataset.id, part: focused.dataset.part, index: [...el.list.children].indexOf(li) } : null;
  }

  function listRefocus(kept) {
    if (!kept) return;
    const items = [...el.list.children];
    const same = items.find((li) => li.dataset.id === kept.id);
    const li = same || items[Math.min(kept.index, items.length - 1)];
    const candidates = li ? [same && li.querySelector('[data-part="' + kept.part + '"]'), li.querySelector("a, button")] : [];
    for (const target of [...candidates, el.filter]) {
      if (!target) continue;
      target.focus();
      if (document.activeElement === target) return; // a hidden one (another row's Rename) takes none
    }
  }

  function renderList() {
    const kept = listFocus();
    el.list.replaceChildren();
    for (const c of state.conversations) {
      const li = document.createElement("li");
      li.className = "conversation-item" + (state.conversation && state.conversation.id === c.id ? " active" : "");
      li.dataset.id = c.id;
      const link = document.createElement("a");
      link.dataset.part = "open";
      link.href = "/c/" + c.id + "/";
      link.textContent = c.title || S.untitled;
      link.addEventListener("click", (event) => {
        event.preventDefault();
        openConversation(c.id, true);
      });
      const rename = document.createElement("button");
      rename.type = "button";
      rename.className = "btn btn-small";
      rename.dataset.part = "rename";
      rename.textContent = S.rename;
      rename.addEventListener("click", async () => {
        const title = window.prompt(S.renamePrompt, c.title);
        if (title === null) return;
        try {
          const updated = await api("PATCH", "/api/v1/conversations/" + c.id + "/", { title });
          c.title = updated.title;
          if (state.conversation && state.conversation.id === c.id) {
            state.conversation.title = updated.title;
            showTitle(updated.title);
          }
          clearErrorOf("rename");
          renderList();
        } catch (err) {
          showErrorOf("rename", err.message);
        }
      });
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "btn btn-small btn-danger";
      remove.dataset.part = "delete";
      remove.textContent = S.delete;
      remove.addEventListener("click", async () => {
        if (!window.confirm(S.deleteConfirm)) return;
        try {
          await api("DELETE", "/api/v1/conversations/" + c.id + "/");
          state.conversations = state.conversations.filter((x) => x.id !== c.id);
          if (state.conversation && state.conversation.id === c.id) newConversation();
          renderList();
        } catch (err) {
          showError(err.message);
        }
      });
      li.append(link, rename, remove);
      el.list.append(li);
    }
    if (state.nextConversations) {
      const li = document.createElement("li");
      li.className = "conversation-more";
      const more = document.createElement("button");
      more.type = "button";
      more.className = "btn btn-small";
      more.dataset.part = "more";
      more.textContent = S.showMore;
      more.addEventListener("click", () => moreConversations().catch((err) => showError(err.message)));
      li.append(more);
      el.list.append(li);
    }
    if (!state.conversations.length && el.filter.value.trim()) {
      // An empty list under a filter is an answer, not a blank: said in words.
      const none = document.createElement("li");
      none.className = "conversation-none";
      none.textContent = S.noMatches;
      el.list.append(none);
    }
    listRefocus(kept);
  }

  // The API's "next" is an absolute URL; only its path and query are followed (same origin,
  // whatever scheme a proxy in front made the server believe).
  function sameOrigin(url) {
    const parsed = new URL(url, window.location.href);
    return parsed.pathname + parsed.search;
  }

  async function moreConversations() {
    const asked = state.nextConversations;
    const data = await api("GET", sameOrigin(asked));
    if (state.nextConversations !== asked) return; // the list was refreshed meanwhile
    const known = new Set(state.conversations.map((c) => c.id));
    state.conversations.push(...data.results.filter((c) => !known.has(c.id)));
    state.nextConversations = data.next;
    renderList();
  }

  let filterTimer = null;
  el.filter.addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(async () => {
      try {
        if (!(await refreshList())) return;
        clearErrorOf("filter");
      } catch (err) {
        // Said, or the unfiltered list would look like what matches the filter.
        showErrorOf("filter", err.message);
      }
    }, 200);
  });

  let listRefreshes = 0; // only the newest answer is drawn: an older query's can arrive last

  // True when this answer was drawn; false when a newer one was asked meanwhile. Only the
  // newest request's failure is thrown.
  async function refreshList() {
    const q = el.filter.value.trim();
    const asked = ++listRefreshes;
    let data;
    try {
      data = await api("GET", "/api/v1/conversations/" + (q ? "?q=" + encodeURIComponent(q) : ""));
    } catch (err) {
      if (asked !== listRefreshes) return false;
      throw err;
    }
    if (asked !== listRefreshes) return false;
    state.conversations = data.results;
    state.nextConversations = data.next;
    const current = state.conversation && data.results.find((c) => c.id === state.conversation.id);
    if (current && current.title !== state.conversation.title) {
      state.conversation.title = current.title;
      showTitle(current.title);
    }
    renderList();
    return true;
  }

  // A new conversation's title is written by a task after its first reply is "done", and no
  // frame announces it (the websocket protocol is fixed): ask for the list again after 1, 3 and
  // 8 more seconds, until the conversation has a title, another is opened or the tries run out.
  const TITLE_RETRY_MS = [1000, 3000, 8000];
  let titleTimer = null;

  function awaitTitle(conversationId, attempt = 0) {
    clearTimeout(titleTimer);
    const waiting = () => state.conversation && state.conversation.id === conversationId && !state.conversation.title;
    if (attempt >= TITLE_RETRY_MS.length || !waiting()) return;
    titleTimer = setTimeout(async () => {
      if (!waiting()) return;
      await refreshList().catch(() => {});
      awaitTitle(conversationId, attempt + 1);
    }, TITLE_RETRY_MS[attempt]);
  }

  // The current conversation's downloads (Markdown and JSON), shown once it exists.
  function updateDownloads() {
    const c = state.conversation;
    el.downloads.hidden = !c;
    if (!c) return;
    const base = "/api/v1/conversations/" + c.id + "/export.";
    el.downloadMd.href = base + "md";
    el.downloadJson.href = base + "json";
  }

  // --- model picker and settings -------------------------------------------------------------
  function renderPicker() {
    el.picker.replaceChildren();
    const current = state.conversation ? state.conversation.model : config.defaultModel;
    let found = false;
    for (const m of config.models) {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.label;
      if (m.id === current) {
        option.selected = true;
        found = true;
      }
      el.picker.append(option);
    }
    if (!found && current) {
      const option = document.createElement("option");
      option.value = current;
      option.textContent = current;
      option.selected = true;
      el.picker.append(option);
    }
  }

  el.picker.addEventListener("change", async () => {
    if (!state.conversation) return;
    try {
      state.conversation = await api("PATCH", "/api/v1/conversations/" + state.conversation.id + "/", { model: el.picker.value });
    } catch (err) {
      showError(err.message);
      renderPicker();
    }
  });

  function fillSettings() {
    const c = state.conversation;
    el.systemPrompt.value = c ? c.system_prompt : "";
    el.temperature.value = c && c.temperature !== null ? c.temperature : "";
    el.maxTokens.value = c && c.max_tokens !== null ? c.max_tokens : "";
  }

  function showSettings(shown) {
    el.settings.hidden = !shown;
    el.settingsToggle.setAttribute("aria-expanded", String(shown));
    // On a phone the panel lies over the page (chat.css), covering the button that opened it:
    // focus goes into the panel, on its close button (a text field would pop the keyboard up
    // over the panel). On a desktop it opens below the button, and focus stays there.
    if (settingsModal()) el.settingsClose.focus();
  }

  // Lying over the page, the panel is a modal dialog: the page under it is inert (no focus, no
  // tap, nothing read out) until it closes. On a desktop it is a part of the page. Asked again
  // when the window changes size (a phone turned, a window widened), as the layout may change.
  let madeInert = [];

  function settingsModal() {
    const modal = !el.settings.hidden && getComputedStyle(el.settings).position === "fixed";
    if (modal) {
      el.settings.setAttribute("role", "dialog");
      el.settings.setAttribute("aria-modal", "true");
    } else {
      el.settings.removeAttribute("role");
      el.settings.removeAttribute("aria-modal");
    }
    for (const node of madeInert) node.inert = false;
    madeInert = [];
    // Everything beside the panel and beside each of its ancestors: the rest of the page.
    for (let node = el.settings; modal && node !== document.body; node = node.parentElement) {
      for (const other of node.parentElement.children) {
        if (other === node || other.inert) continue;
        other.inert = true;
        madeInert.push(other);
      }
    }
    return modal;
  }

  window.addEventListener("resize", () => {
    if (!el.settings.hidden) settingsModal();
  });

  // Tab and Shift+Tab go round the dialog's own controls: past the last comes the first again.
  el.settings.addEventListener("keydown", (event) => {
    if (event.key !== "Tab" || el.settings.getAttribute("aria-modal") !== "true") return;
    const controls = [...el.settings.querySelectorAll("button, input, textarea, select, a[href]")].filter(
      (c) => !c.disabled && c.getClientRects().length > 0,
    );
    const first = controls[0];
    const last = controls[controls.length - 1];
    if (event.shiftKey ? document.activeElement === first : document.activeElement === last) {
      event.preventDefault();
      (event.shiftKey ? last : first).focus();
    }
  });

  // Closed, focus goes back to the button that opened it, not to the top of the page.
  function closeSettings() {
    showSettings(false);
    el.settingsToggle.focus();
  }

  el.settingsToggle.addEventListener("click", () => showSettings(el.settings.hidden));
  el.settingsClose.addEventListener("click", closeSettings);
  // Escape closes the panel from any of its fields (or its button).
  for (const target of [el.settings, el.settingsToggle]) {
    target.addEventListener("keydown", (event) => {
      if (event.key !== "Escape" || el.settings.hidden) return;
      event.preventDefault();
      closeSettings();
    });
  }

  el.settings.addEventListener("submit", async (event) => {
    event.preventDefault();
    el.settingsError.textContent = "";
    const body = {
      system_prompt: el.systemPrompt.value,
      temperature: el.temperature.value === "" ? null : Number(el.temperature.value),
      max_tokens: el.maxTokens.value === "" ? null : Number(el.maxTokens.value),
    };
    try {
      if (state.conversation || creating) {
        await ensureConversation();
        state.conversation = await api("PATCH", "/api/v1/conversations/" + state.conversation.id + "/", body);
      } else {
        // A new chat is created with its settings in one request: refused, nothing is created.
        await ensureConversation(body);
      }
      el.settingsError.textContent = S.saved;
    } catch (err) {
      el.settingsError.textContent = err.message;
    }
  });

  // --- messages ------------------------------------------------------------------------------
  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    // Served over plain http (a LAN address, not localhost) a page has no Clipboard API; the
    // older copy command, on a selected textarea out of sight, still works there.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    const focused = document.activeElement;
    document.body.append(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    if (focused) focused.focus();
    if (!copied) throw new Error("copy refused");
  }

  function addCopyButtons(container) {
    for (const pre of container.querySelectorAll("pre")) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy-code";
      button.textContent = S.copy;
      button.addEventListener("click", async () => {
        const code = pre.querySelector("code") || pre;
        try {
          await copyText(code.textContent);
          button.textContent = S.copied;
          setTimeout(() => (button.textContent = S.copy), 1500);
        } catch (_err) {
          /* clipboard refused: the text stays selectable */
        }
      });
      pre.prepend(button);
    }
  }

  function messageNode(id) {
    return el.messages.querySelector('[data-id="' + CSS.escape(id) + '"]');
  }

  function ensureMessage(id, role) {
    let node = messageNode(id);
    if (!node) {
      node = document.createElement("article");
      node.className = "message message-" + role;
      node.dataset.id = id;
      const who = document.createElement("div");
      who.className = "message-who";
      who.textContent = role === "user" ? S.you : S.assistant;
      const body = document.createElement("div");
      body.className = "message-body";
      const meta = document.createElement("div");
      meta.className = "message-meta";
      node.append(who, body, meta);
      el.messages.append(node);
    }
    el.empty.hidden = true;
    return node;
  }

  // Money arrives as a decimal string with 10 places; shown without float rounding, trailing
  // zeros trimmed to at least cents ("0.0020000000" -> "0.002", "0E-10"-free by contract).
  function money(text) {
    const [whole, frac = ""] = String(text).split(".");
    let trimmed = frac.replace(/0+$/, "");
    while (trimmed.length < 2) trimmed += "0";
    return whole + "." + trimmed;
  }

  function setMeta(node, m) {
    const meta = node.querySelector(".message-meta");
    if (m.role !== "assistant") {
      meta.textContent = "";
      return;
    }
    const parts = [];
    if (m.status === "cancelled") parts.push(S.cancelled);
    if (m.status === "error") parts.push(S.error + (m.error_code ? ": " + (S.errorCodes[m.error_code] || m.error_code) : ""));
    if (!isRunning(m)) {
      parts.push(fmt(S.tokens, { input: m.input_tokens, output: m.output_tokens }));
      parts.push(fmt(S.cost, { cost: money(m.cost) }));
    }
    meta.textContent = parts.join(" · ");
  }

  function renderMessage(m) {
    const node = ensureMessage(m.id, m.role);
    node.dataset.status = m.status;
    const body = node.querySelector(".message-body");
    if (m.role === "assistant" && m.html !== null && m.html !== undefined && !isRunning(m)) {
      body.innerHTML = m.html; // sanitized on the server (markdown-it, raw HTML off, then nh3)
      addCopyButtons(body);
    } else {
      body.textContent = m.content;
    }
    setMeta(node, m);
  }

  // follow: show the end (a conversation just opened); else the view stays where it was.
  function renderMessages(follow = true) {
    const top = el.messages.scrollTop;
    el.messages.querySelectorAll(".message").forEach((n) => n.remove());
    for (const m of state.messages) renderMessage(m);
    el.empty.hidden = state.messages.length > 0;
    updateButtons();
    if (follow) scrollDown();
    else el.messages.scrollTop = top;
  }

  function scrollDown() {
    el.messages.scrollTop = el.messages.scrollHeight;
  }

  // Whether the person is at the end of the messages, following the reply. Scrolled up to read
  // something, they are left there while text arrives; only their own message brings them down.
  function atBottom() {
    const m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 40;
  }

  function updateButtons() {
    el.stop.hidden = !state.running;
    // A reply to ask for again, or a saved question left without one (refused: a budget, the
    // rate limit, a busy conversation): Regenerate answers it, where sending it again would put
    // the question twice in the record and in what the model reads.
    const last = state.messages[state.messages.length - 1];
    const answerable = state.messages.some((m) => m.role === "assistant") || (last && last.role === "user" && !isUnsent(last));
    el.regen.hidden = Boolean(state.running) || !answerable;
    // Disabled while a click waits for the socket: it was taken, and goes out once connected.
    el.stop.disabled = state.controls.has("stop");
    el.regen.disabled = state.controls.has("regenerate");
  }

  let reloads = 0; // only the newest reload's answer is drawn: an older one can arrive last

  async function reloadMessages() {
    if (!state.conversation) return;
    const conversationId = state.conversation.id;
    const asked = ++reloads;
    const framesBefore = state.frames;
    const data = await api("GET", "/api/v1/conversations/" + conversationId + "/");
    // Another conversation was opened while this one was asked for: it is not this page's now.
    if (asked !== reloads || !state.conversation || state.conversation.id !== conversationId) return;
    // What the socket knows and the database does not yet: a running reply's row holds its text
    // only when it ends (the streamed text arrived as "resume" and deltas), and a message not
    // yet acknowledged is not saved. Both stay as they are, or a reconnect would blank the reply
    // until "done" and hide the message just sent.
    const live = state.running ? findMessage(state.running) : null;
    // A message whose ack was lost (the socket stayed open) is saved all the same: the database
    // names its client_id, and it is shown once, as saved, and never resent.
    const saved = new Set(data.messages.map((m) => m.client_id).filter(Boolean));
    for (const clientId of saved) state.unacked.delete(clientId);
    // The answer can also have been read before what the socket said while it was on its way
    // (a message resent after a reconnect, saved and acknowledged; its reply started): what it
    // lacks of that stays too, or it would blink out until the next frame.
    const known = new Set(data.messages.map((m) => m.id));
    const newer = state.messages.filter(
      (m) => !known.has(m.id) && (isUnsent(m) ? !saved.has(m.client_id) : m.seen > framesBefore),
    );
    state.messages = data.messages.map((m) => (live && m.id === live.id && isRunning(m) ? live : m)).concat(newer);
    const running = state.messages.find(isRunning);
    state.running = running ? running.id : null;
    renderMessages(atBottom());
  }

  // --- the socket ----------------------------------------------------------------------------
  function setStatus(text) {
    el.status.textContent = text;
  }

  function connect() {
    if (!state.conversation || state.signedOut) return;
    disconnect(); // one socket at a time: an old one left open would deliver its frames too
    const conversationId = state.conversation.id;
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + window.location.host + "/ws/chat/" + conversationId + "/");
    state.socket = socket;
    let opened = false;
    socket.addEventListener("open", () => {
      opened = true;
      const reconnected = state.retry > 0;
      state.retry = 0;
      setStatus(S.connected);
      if (reconnected) reloadMessages().catch(() => {});
      for (const [type, id] of state.controls) {
        if (id === conversationId) socket.send(JSON.stringify({ type }));
      }
      state.controls.clear();
      updateButtons();
      // The one place a frame written while the socket was not open goes out (send() leaves
      // it here), and where an unacked one is resent after a reconnect.
      for (const entry of state.unacked.values()) {
        if (entry.conversationId === conversationId) socket.send(JSON.stringify(entry.frame));
      }
    });
    socket.addEventListener("message", (event) => handleFrame(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => {
      if (state.socket !== socket) return; // replaced on purpose
      state.socket = null;
      // 4401: the session ended (logged out elsewhere, account closed): sign in again.
      if (event.code === 4401) {
        signedOut();
        return;
      }
      // Refused before it opened: the server refuses a conversation that is not there (deleted
      // in another tab, say) or a session that ended meanwhile exactly as it refuses a network
      // fault. The API tells them apart (404, 401), or the page would retry forever and keep
      // what is written meanwhile as if it were sent.
      if (!opened) {
        api("GET", "/api/v1/conversations/" + conversationId + "/").catch((err) => {
          if (err.status === 404) conversationGone(conversationId);
        });
      }
      // 4429: too many windows or frames; retrying at once would only be refused again.
      if (event.code === 4429) state.retry = Math.max(state.retry, 4);
      setStatus(event.code === 4429 ? S.tooManyWindows : S.reconnecting);
      const delay = Math.min(10000, 500 * 2 ** state.retry) * (0.5 + Math.random());
      state.retry += 1;
      setTimeout(() => {
        if (state.conversation && state.conversation.id === conversationId && !state.socket) connect();
      }, delay);
    });
  }

  // The open conversation no longer exists: said so, as when it is deleted from this tab's
  // list, and what was written but not sent goes back into the input.
  function conversationGone(conversationId) {
    if (!state.conversation || state.conversation.id !== conversationId) return;
    const unsent = state.messages.filter(isUnsent).map((m) => m.content);
    for (const [clientId, entry] of state.unacked) {
      if (entry.conversationId === conversationId) state.unacked.delete(clientId);
    }
    state.conversations = state.conversations.filter((c) => c.id !== conversationId);
    newConversation();
    if (unsent.length && !el.input.value) el.input.value = unsent.join("\n\n");
    showError(S.gone);
  }

  // The session ended (signed out in another tab or while the socket was down, expired, the
  // account closed): nothing can be sent until they sign in again. Said once, with the way
  // back in, and not by reloading: the reload would lose what is being written. What was
  // written but not sent goes back into the input, before anything typed there since.
  function signedOut() {
    if (state.signedOut) return;
    disconnect();
    const unsent = state.messages.filter(isUnsent);
    state.unacked.clear();
    state.controls.clear();
    if (unsent.length) {
      state.messages = state.messages.filter((m) => !unsent.includes(m));
      el.input.value = unsent.map((m) => m.content).concat(el.input.value ? [el.input.value] : []).join("\n\n");
      state.givenBack = {
        conversationId: state.conversation.id,
        sent: unsent.map((m) => ({ content: m.content, clientId: m.client_id })),
      };
      renderMessages(atBottom());
    }
    setStatus("");
    const link = document.createElement("a");
    // Back to this same page after signing in, as the server's own login redirect does.
    link.href = config.loginUrl + "?next=" + encodeURIComponent(window.location.pathname).replace(/%2F/g, "/");
    link.textContent = S.logIn;
    el.error.replaceChildren(S.signedOut + " ", link);
    el.error.hidden = false;
    state.signedOut = true;
  }

  // Signing in again leaves this page (the "Log in" link, and back here after): what waits in
  // the input goes along, in this tab's own storage, with the client_ids of the messages given
  // back, so that sent again unchanged they are the same messages to the server (one message,
  // one charge, even if the first send was saved and only its ack was lost). Kept per
  // conversation: only its owner can open it again.
  const KEPT = "parley.unsent";

  window.addEventListener("pagehide", () => {
    if (!state.signedOut || !state.conversation || !el.input.value) return;
    const given = state.givenBack && state.givenBack.conversationId === state.conversation.id ? state.givenBack.sent : [];
    try {
      sessionStorage.setItem(KEPT, JSON.stringify({ conversationId: state.conversation.id, text: el.input.value, sent: given }));
    } catch (_err) {
      /* no storage (disabled, full): the text goes the way of any unsent draft */
    }
  });

  function restoreKept() {
    let kept = null;
    try {
      kept = JSON.parse(sessionStorage.getItem(KEPT));
      sessionStorage.removeItem(KEPT);
    } catch (_err) {
      return;
    }
    if (!kept || !state.conversation || kept.conversationId !== state.conversation.id || el.input.value) return;
    el.input.value = kept.text;
    state.givenBack = { conversationId: kept.conversationId, sent: kept.sent };
  }

  // The client_id a message given back went out with, when its text is sent again as it was
  // given back, in its conversation. Used once; and forgotten at the first edit, which makes it
  // another message (a later "yes" must not be taken for an earlier one the server has).
  function givenBackClientId(text) {
    const given = state.givenBack;
    state.givenBack = null;
    if (!given || !state.conversation || given.conversationId !== state.conversation.id) return null;
    const match = given.sent.find((s) => s.content === text);
    return match ? match.clientId : null;
  }

  el.input.addEventListener("input", () => (state.givenBack = null));

  function disconnect() {
    if (state.socket) {
      const socket = state.socket;
      state.socket = null;
      socket.close();
    }
  }

  // A message written here and not yet acknowledged (not saved: its id is the page's own).
  function isUnsent(m) {
    return m.id.startsWith("pending-");
  }

  function isRunning(m) {
    return m.status === "pending" || m.status === "streaming";
  }

  function findMessage(id) {
    return state.messages.find((m) => m.id === id);
  }

  // The page's own copy of a message it sent, not the saved one a reload drew with the same
  // client_id.
  function unsentCopy(clientId) {
    return state.messages.find((m) => isUnsent(m) && m.client_id === clientId);
  }

  // An error about a message that was never acked (and names no saved message) means the server
  // did not keep it: it must not look sent, and its text must not be lost. Back into the input
  // it goes, if that is still empty; else the bubble stays, marked as not sent.
  function refused(frame) {
    const m = unsentCopy(frame.client_id);
    if (!m || frame.user_message_id) return;
    const node = messageNode(m.id);
    if (!el.input.value) {
      el.input.value = m.content;
      state.messages = state.messages.filter((x) => x !== m);
      if (node) node.remove();
      el.empty.hidden = state.messages.length > 0;
      updateButtons();
    } else if (node) {
      node.dataset.status = "unsent";
      node.querySelector(".message-meta").textContent = S.error + ": " + frame.code;
    }
  }

  // A screen reader hears a reply once, whole, when it is finished (the message list is no live
  // region: it would read out every streamed piece). The rendered text, as it is shown, without
  // the code blocks' Copy buttons; put in a new node, so that the same text twice is read twice.
  function announceReply(id, finishReason) {
    const node = messageNode(id);
    if (!node) return;
    const body = node.querySelector(".message-body").cloneNode(true);
    body.querySelectorAll(".copy-code").forEach((button) => button.remove());
    const text = [body.textContent.trim(), finishReason === "cancelled" ? S.cancelled : ""].filter(Boolean).join(" ");
    if (!text) return;
    const said = document.createElement("p");
    said.textContent = text;
    el.announcer.replaceChildren(said);
  }

  // Each message the socket touches keeps the count of the frame that did (m.seen): a reload
  // asked for before it keeps the message (reloadMessages).
  function handleFrame(frame) {
    state.frames += 1;
    switch (frame.type) {
      case "ack": {
        state.unacked.delete(frame.client_id);
        const pending = unsentCopy(frame.client_id);
        if (pending) {
          const node = messageNode(pending.id);
          if (findMessage(frame.message_id)) {
            // A resend of a message a reload already showed from the database: shown once.
            state.messages = state.messages.filter((m) => m !== pending);
            if (node) node.remove();
          } else {
            pending.id = frame.message_id;
            pending.seen = state.frames;
            if (node) node.dataset.id = frame.message_id;
          }
        }
        break;
      }
      case "start":
      case "resume": {
        let m = findMessage(frame.message_id);
        // A reply to a question this tab did not send (another tab's, or a regenerate): the
        // question is only in the database so far. Asked for now, not at "done", or the reply
        // would stream under the previous one with nothing asking it.
        const last = state.messages[state.messages.length - 1];
        const catchUp = !m && frame.type === "start" && (!last || last.role !== "user");
        if (!m) {
          m = { id: frame.message_id, role: "assistant", content: "", status: "streaming", html: null };
          state.messages.push(m);
        }
        m.status = "streaming";
        m.seen = state.frames;
        m.content = frame.type === "resume" ? frame.text : "";
        m.seq = frame.type === "resume" ? frame.seq : 0; // the last delta in m.content
        state.running = frame.message_id;
        const follow = atBottom();
        renderMessage(m);
        updateButtons();
        if (follow) scrollDown();
        if (catchUp) reloadMessages().catch(() => {});
        break;
      }
      case "delta": {
        const m = findMessage(frame.message_id);
        if (!m) break;
        m.seen = state.frames;
        // A delta already shown (delivered twice, or already in a resume's text) is skipped.
        if (typeof frame.seq === "number" && typeof m.seq === "number") {
          if (frame.seq <= m.seq) break;
          m.seq = frame.seq;
        }
        m.content += frame.text;
        const node = messageNode(m.id);
        const follow = atBottom();
        if (node) node.querySelector(".message-body").append(document.createTextNode(frame.text));
        if (follow) scrollDown();
        break;
      }
      case "done": {
        if (state.running === frame.message_id) state.running = null;
        if (el.error.textContent === S.busy) showError(""); // the message waiting can go now
        updateButtons();
        // The final text, rendered and sanitized by the server, replaces the streamed text.
        const conversationId = state.conversation && state.conversation.id;
        reloadMessages()
          .finally(() => announceReply(frame.message_id, frame.finish_reason))
          .then(() => refreshList())
          .then(() => awaitTitle(conversationId))
          .catch(() => {});
        break;
      }
      case "error": {
        if (frame.client_id) {
          state.unacked.delete(frame.client_id);
          refused(frame);
        }
        showError(frame.message);
        updateButtons(); // a saved question refused: Regenerate can answer it later
        break;
      }
      default:
        break;
    }
  }

  // --- sending -------------------------------------------------------------------------------
  let creating = null; // the conversation being created: a second send waits for it, not another

  function ensureConversation(fields = {}) {
    if (state.conversation) return Promise.resolve(state.conversation);
    if (!creating) {
      creating = createConversation(fields).then((created) => {
        connect();
        return created;
      }).finally(() => (creating = null));
    }
    return creating;
  }

  async function createConversation(fields) {
    const created = await api("POST", "/api/v1/conversations/", { model: el.picker.value, ...fields });
    state.conversation = created;
    state.messages = [];
    state.conversations.unshift(created);
    showTitle(created.title);
    window.history.pushState({}, "", "/c/" + created.id + "/");
    renderList();
    updateDownloads();
    return created;
  }

  async function send() {
    if (state.signedOut) return; // the text waits in the input; the notice says to sign in
    const text = el.input.value;
    if (!text.trim()) return;
    // Counted in characters (code points), as the server counts: text.length counts UTF-16
    // units, two for an emoji, and would refuse what the server accepts.
    if ([...text].length > config.maxChars) {
      showError(S.tooLong);
      return;
    }
    // The server would save it and then refuse it as busy: a question in the record that no
    // reply answers. It waits in the input until this reply is done.
    if (state.running) {
      showError(S.busy);
      return;
    }
    showError("");
    // Emptied before anything is awaited: a second click or Enter meanwhile finds nothing to send.
    el.input.value = "";
    try {
      await ensureConversation();
    } catch (err) {
      if (!el.input.value) el.input.value = text;
      showError(err.message);
      return;
    }
    const clientId = givenBackClientId(text) || crypto.randomUUID();
    const frame = { type: "user_message", content: text, client_id: clientId };
    const m = { id: "pending-" + clientId, client_id: clientId, role: "user", content: text, status: "done" };
    state.messages.push(m);
    renderMessage(m);
    scrollDown();
    state.unacked.set(clientId, { conversationId: state.conversation.id, frame });
    // Sent here only on an open socket; otherwise its "open" handler sends it, once.
    if (!state.socket) connect();
    else if (state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(frame));
  }

  el.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  el.input.addEventListener("keydown", (event) => {
    // An Enter that ends an input method's composition (a Korean syllable, a Japanese word)
    // picks the text; it does not send. Chrome and Firefox say so with isComposing; Safari
    // sends that keydown with isComposing false and keyCode 229 ("the IME is handling it").
    const composing = event.isComposing || event.keyCode === 229;
    if (event.key === "Enter" && !event.shiftKey && !composing) {
      event.preventDefault();
      send();
    }
  });
  // Stop and Regenerate: sent now on an open socket, else as soon as one opens (connected at
  // once rather than after the back-off: the person is waiting on it).
  function sendControl(type) {
    if (!state.conversation || state.signedOut) return;
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify({ type }));
      return;
    }
    state.controls.set(type, state.conversation.id);
    updateButtons();
    if (!state.socket) connect();
  }

  el.stop.addEventListener("click", () => sendControl("stop"));
  el.regen.addEventListener("click", () => {
    showError("");
    sendControl("regenerate");
  });

  // --- navigation ----------------------------------------------------------------------------
  function newConversation() {
    disconnect();
    state.controls.clear();
    state.conversation = null;
    state.messages = [];
    state.running = null;
    window.history.pushState({}, "", "/");
    showTitle("");
    showSidebar(false); // on a phone the list would still cover the chat
    updateDownloads();
    renderPicker();
    fillSettings();
    renderMessages();
    renderList();
    el.input.focus();
  }

  async function openConversation(id, push) {
    disconnect();
    state.controls.clear();
    try {
      const data = await api("GET", "/api/v1/conversations/" + id + "/");
      state.messages = data.messages;
      delete data.messages;
      state.conversation = data;
    } catch (err) {
      showError(err.message);
      return;
    }
    if (push) window.history.pushState({}, "", "/c/" + id + "/");
    state.running = null;
    showTitle(state.conversation.title);
    showSidebar(false);
    updateDownloads();
    renderPicker();
    fillSettings();
    renderMessages();
    renderList();
    connect();
  }

  window.addEventListener("popstate", () => {
    const match = window.location.pathname.match(/^\/c\/([0-9a-f-]{36})\/$/);
    if (match) openConversation(match[1], false);
    else newConversation();
  });
  el.newBtn.addEventListener("click", newConversation);
  // On a phone the list slides over the chat (chat.css hides it from the keyboard when closed):
  // opened, focus goes into it, on its close button; closed (that button, Escape, a
  // conversation chosen), focus that was in it goes back to the button that opens it, in sight.
  function showSidebar(shown) {
    const phone = getComputedStyle(el.sidebarOpen).display !== "none";
    const inside = el.sidebar.contains(document.activeElement);
    el.chat.classList.toggle("sidebar-shown", shown);
    if (!phone) return;
    if (shown) el.sidebarClose.focus();
    else if (inside) el.sidebarOpen.focus();
  }

  el.sidebarOpen.addEventListener("click", () => showSidebar(true));
  el.sidebarClose.addEventListener("click", () => showSidebar(false));
  el.sidebar.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || !el.chat.classList.contains("sidebar-shown")) return;
    event.preventDefault();
    showSidebar(false);
  });

  renderPicker();
  fillSettings();
  renderList();
  renderMessages();
  updateDownloads();
  restoreKept();
  connect();
})();
