"""Helpers the data tests share: chat messages, plain encoding and chat-template rendering of the tiny tokenizer."""

from __future__ import annotations


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def enc(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def render(tokenizer, messages, **kw):
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)["input_ids"])
