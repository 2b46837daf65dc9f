// The chat page served at GET /: one static HTML file with inline CSS and JS (no build step, no
// external assets). It streams replies from /v1/chat/completions with the chosen kv_policy and,
// after each reply, draws the conversation's tokens shaded by how many KV heads still hold each
// (the request's kv_strip), with the KV share kept and bytes.
#pragma once

namespace kvgate::serve {

const char* chat_page_html();

}  // namespace kvgate::serve
