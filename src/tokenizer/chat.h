// ChatML formatting, and the one thing we take from a model's Jinja chat template: its default
// system prompt. kvgate does not run Jinja; every model it serves speaks ChatML.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "tokenizer/tokenizer.h"

namespace kvgate::chat {

// The text X of the first template string (a quoted literal inside {{ }} / {% %}, or raw text
// outside them) that holds "<|im_start|>system\nX<|im_end|>" with no template code in between:
// SmolLM2's template emits it when messages[0] is not a system message, Qwen2.5's in the else
// branch of its system-message test. nullopt when there is none (Qwen3, no template).
std::optional<std::string> find_default_system_prompt(std::string_view jinja);

// "<|im_start|>{role}\n{content}<|im_end|>\n" per message, preceded by the default system prompt
// when the first message is not "system", then "<|im_start|>assistant\n" if asked.
std::string format_chatml(std::span<const chat_message> messages, bool add_assistant_prompt,
                          const std::optional<std::string>& default_system_prompt);

}  // namespace kvgate::chat
