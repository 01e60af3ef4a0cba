"""The offline tokenizer: a byte-level BPE trained on the bundled corpus, with the project's chat template.

Byte-level, so no text is ever out of vocabulary; trained with the `tokenizers` library (deterministic for a given
corpus and settings) and wrapped as a transformers `PreTrainedTokenizerFast`, so `save_pretrained` /
`AutoTokenizer.from_pretrained` round-trip it like any hub tokenizer.

No special tokens are added by plain `tokenizer(text)` calls (as with GPT-2); the chat template adds `<|bos|>` and
the role markers.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|end|>"  # end of turn: generation stops on it
ROLE_TOKENS: tuple[str, ...] = ("<|system|>", "<|user|>", "<|assistant|>")
# Fixed order, so the special tokens have ids 0..5 in every build.
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *ROLE_TOKENS)
DEFAULT_VOCAB_SIZE = 1024

# bos, then per message "<|role|>\n{content}<|end|>\n". For assistant messages the content and its <|end|> sit
# inside {% generation %} so `return_assistant_tokens_mask=True` marks exactly the tokens the model must learn to
# produce (the "\n" after <|end|> is template glue, not generated). The role header is outside the span: it is
# part of the generation prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('chat template: role must be system, user or assistant, got ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def byte_level_bpe(vocab_size: int, special_tokens: list[str]) -> tuple[Tokenizer, trainers.BpeTrainer]:
    """An untrained byte-level BPE (GPT-2's pre-tokenisation and decoder) and the trainer that fits it."""
    bpe = Tokenizer(models.BPE())
    # GPT-2 pre-tokenisation: a space joins the following word, "\n" stays its own piece (so an assistant
    # mask never bleeds into the newline that ends the role header).
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return bpe, trainer


def train_tokenizer(corpus: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on ``corpus`` and wrap it with the special tokens and the chat template."""
    bpe, trainer = byte_level_bpe(vocab_size, list(SPECIAL_TOKENS))
    bpe.train_from_iterator(list(corpus), trainer=trainer)
    return wrap_tokenizer(bpe)


def wrap_tokenizer(bpe: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around a trained `tokenizers.Tokenizer`, with this project's conventions."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=list(ROLE_TOKENS),
        padding_side="right",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
