"""--add-tokens: whole words appended to a vocab.txt vocabulary, each new embedding row the mean
of the rows of the pieces the old vocabulary cut it into.

Every old id keeps its token and its row; the new words get the ids after the last one,
so they tokenise whole (WordPiece takes the longest match). The grown vocabulary is
written as vocab.txt to a folder named by its contents in the cache folder
(paths.cache_dir): the preprocessor reads it, and the export or the pretrain output
copies it as their own asset.
"""

import hashlib
import os
import unicodedata
from typing import List, Sequence, Tuple

import numpy as np

from keras_bert_ft.errors import KbftError, bad_argument


def read_added_words(path: str, vocab: Sequence[str], lower_case: bool,
                     encoding: str = "utf-8") -> List[str]:
    """The words of `path` (one per line, blank lines skipped) not already in `vocab`,
    lower-cased when the tokenizer lower-cases; a word the tokenizer would cut before
    WordPiece (whitespace, punctuation) is refused by name."""
    if not isinstance(path, str) or not os.path.isfile(path):
        raise bad_argument("add_tokens", path, "an existing text file, one word per line")
    with open(path, encoding=encoding) as f:
        lines = [line.strip() for line in f if line.strip()]
    known, words = set(vocab), []
    for word in lines:
        if lower_case:  # as the tokenizer sees it: lower-cased, accents stripped
            word = "".join(c for c in unicodedata.normalize("NFD", word.lower())
                           if unicodedata.category(c) != "Mn")
        cut = [c for c in word if c.isspace() or _is_punctuation(c)]
        if cut or word.startswith("##"):
            raise KbftError(f"add_tokens must hold whole words the tokenizer keeps in one "
                            f"piece (no spaces, punctuation or ##). Received: {word!r} in "
                            f"add_tokens={path!r}", argument="add_tokens")
        if word not in known:
            known.add(word)
            words.append(word)
    return words


def _is_punctuation(c: str) -> bool:
    """BERT's BasicTokenizer splits on these (ASCII symbols and Unicode P*)."""
    code = ord(c)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def grown_vocab_file(vocab: Sequence[str], words: Sequence[str]) -> str:
    """The old tokens, then `words`, as a vocab.txt in the cache folder."""
    from keras_bert_ft.paths import cache_dir, write_whole
    text = "\n".join(list(vocab) + list(words)) + "\n"
    # Named vocab.txt (in a folder named by its contents): the asset keeps the name.
    folder = os.path.join(cache_dir(), "vocab", hashlib.sha1(text.encode()).hexdigest()[:16])
    path = os.path.join(folder, "vocab.txt")
    if not os.path.isfile(path):
        write_whole(path, text.encode("utf-8"))
    return path


def old_pieces(old_vocab_file: str, words: Sequence[str], lower_case: bool) -> List[List[int]]:
    """The ids of the pieces the old vocabulary cuts each word into."""
    import tensorflow as tf
    from keras_bert_ft.data.preprocessing import Preprocessor
    old = Preprocessor.from_vocab(old_vocab_file, lower_case=lower_case)
    return old.tokenize(tf.constant(list(words))).to_list()


def mean_rows(table: np.ndarray, pieces: Sequence[Sequence[int]]) -> np.ndarray:
    """A row (or value, for a 1-D `table`) per word: the mean over its pieces."""
    return np.stack([table[list(ids)].mean(axis=0) for ids in pieces]).astype(table.dtype)


def plan(config, encoder_vocab_file: str) -> Tuple[str, List[str], str]:
    """(old vocab file, new words, grown vocab file) for `config.add_tokens`; the
    config's validation has refused a preprocessor that is not a vocab.txt."""
    from keras_bert_ft.data.preprocessing import read_vocab
    old = config.preprocessor or encoder_vocab_file
    if old is None:
        raise bad_argument("add_tokens", config.add_tokens, "used with an encoder that "
                           "carries a vocab.txt, or --preprocessor vocab.txt")
    vocab = read_vocab(old)
    words = read_added_words(config.add_tokens, vocab, config.lower_case, config.encoding)
    return old, words, grown_vocab_file(vocab, words)


def add_tokens(encoder, config) -> List[str]:
    """Grows `encoder` (a NativeEncoder) by the words of `config.add_tokens`; returns
    them. Its `vocab_path` becomes the grown vocabulary, which the preprocessor reads."""
    from keras_bert_ft.encoders.native import NativeEncoder
    if not isinstance(encoder, NativeEncoder):
        raise bad_argument("add_tokens", config.add_tokens, "used with the native encoder "
                           f"(the encoder {config.encoder!r} runs as its SavedModel graph, "
                           "whose embedding table cannot grow)")
    old, words, grown = plan(config, encoder.vocab_path)
    lower = config.lower_case
    if lower and encoder.do_lower_case is not None:
        lower = encoder.do_lower_case  # as build.build_preprocessor decides
    encoder.added_pieces = old_pieces(old, words, lower) if words else []
    if words:
        table = encoder.bert.get_embedding_table().numpy()
        encoder.add_embedding_rows(mean_rows(table, encoder.added_pieces), grown)
    else:
        encoder.vocab_path = grown
    return words
