"""The ``q`` search index: words of titles and authors found through their trigrams, ISBN-like
pieces through bit sets of theirs; every query word must be a substring of a title, an author
or an ISBN, as the API promises. Kept up to date change by change."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from library.books import fold

_ISBNISH_RAW = "0123456789xX"


class _Stale(Exception):
    """A derived structure does not match the changes it is given: build it again from the books."""


_ISBNISH = frozenset("0123456789x")


_WORD_SHARDS = 128


_GRAM_SHARDS = 64


def _tokens(book: Mapping[str, Any]) -> set[str]:
    """The whitespace-free pieces of a book's folded title and author and its ISBN: a query word
    (which has no whitespace) is in one of those texts exactly when it is in one of its pieces."""
    found = set(fold(book.get("title")).split(" "))
    found.update(fold(book.get("author")).split(" "))
    found.update((book.get("isbn") or "").lower().split(" "))
    found.discard("")
    return found


def _contains(book: Mapping[str, Any], word: str) -> bool:
    """The definition of a match: ``word`` is in the folded title, author or ISBN."""
    return (
        word in fold(book.get("title")) or word in fold(book.get("author")) or word in (book.get("isbn") or "").lower()
    )


def _isbnish_tokens(book: Mapping[str, Any]) -> list[str]:
    """The pieces of :func:`_tokens` made of three or more digits or x, without folding the texts
    that cannot hold one (casefolding makes digits and x only of digits, x and X)."""
    found = [t for t in (book.get("isbn") or "").lower().split(" ") if _isbnish(t)]
    for field in ("title", "author"):
        text = book.get(field)
        if text and any(c in text for c in _ISBNISH_RAW):
            found.extend(t for t in fold(text).split(" ") if _isbnish(t))
    return found


def _isbnish(token: str) -> bool:
    return len(token) >= 3 and _ISBNISH.issuperset(token)


def _trigrams(text: str) -> set[str]:
    return {text[i : i + 3] for i in range(len(text) - 2)}


class SearchIndex:
    """Where each query word can be found, kept up to date per change. Never changed once built:
    :meth:`patched` copies only the shards a change touches.

    - Words (every whitespace-free piece of the folded title and author that is not made of ISBN
      characters only): ``postings`` maps each to the ids of its books, and ``grams`` each
      trigram to the words that contain it, so a query word is looked up in the words that hold
      all its trigrams (shorter query words: in every word).
    - ISBNs (and other pieces of three or more digits or x): ``digits`` maps each trigram to a bit
      set (an int) of the books whose ISBN-like pieces contain it; a candidate from the bits is
      checked against the book itself.
    """

    __slots__ = ("postings", "grams", "digits")

    def __init__(
        self,
        postings: list[dict[str, frozenset[int]]],
        grams: list[dict[str, frozenset[str]]],
        digits: dict[str, int] | None,
    ) -> None:
        self.postings, self.grams, self.digits = postings, grams, digits

    def with_digits(self, books: Mapping[int, Mapping[str, Any]]) -> SearchIndex:
        """This index with its ISBN part (built now if it has none)."""
        if self.digits is not None:
            return self
        return SearchIndex(self.postings, self.grams, self.build_digits(books))

    @classmethod
    def build(cls, books: Mapping[int, Mapping[str, Any]]) -> SearchIndex:
        words: dict[str, list[int]] = {}
        for bid, book in books.items():
            for token in _tokens(book):
                if not _isbnish(token):
                    words.setdefault(token, []).append(bid)
        postings: list[dict[str, frozenset[int]]] = [{} for _ in range(_WORD_SHARDS)]
        gram_words: dict[str, list[str]] = {}
        for word, ids in words.items():
            postings[hash(word) % _WORD_SHARDS][word] = frozenset(ids)
            for gram in _trigrams(word):
                gram_words.setdefault(gram, []).append(word)
        del words
        grams: list[dict[str, frozenset[str]]] = [{} for _ in range(_GRAM_SHARDS)]
        for gram, found in gram_words.items():
            grams[hash(gram) % _GRAM_SHARDS][gram] = frozenset(found)
        return cls(postings, grams, None)

    @staticmethod
    def build_digits(books: Mapping[int, Mapping[str, Any]]) -> dict[str, int]:
        """The ISBN part (built on the first query that could be in an ISBN): each trigram's bit set."""
        size = (max(books) // 8 + 1) if books else 1
        bits: dict[str, bytearray] = {}
        for bid, book in books.items():
            grams: set[str] = set()
            for token in _isbnish_tokens(book):
                grams.update(_trigrams(token))
            byte, bit = bid >> 3, 1 << (bid & 7)
            for gram in grams:
                found = bits.get(gram)
                if found is None:
                    found = bits[gram] = bytearray(size)
                found[byte] |= bit
        return {gram: int.from_bytes(found, "little") for gram, found in bits.items()}

    def patched(self, changes: list[tuple[int, Any, Any]]) -> SearchIndex:
        postings, grams = list(self.postings), list(self.grams)
        digits = dict(self.digits) if self.digits is not None else None
        copied: set[tuple[str, int]] = set()

        def shard(kind: str, table: list[dict[str, Any]], key: str, count: int) -> dict[str, Any]:
            at = hash(key) % count
            if (kind, at) not in copied:
                copied.add((kind, at))
                table[at] = dict(table[at])
            return table[at]

        for bid, before, after in changes:
            old = _tokens(before) if before is not None else set()
            new = _tokens(after) if after is not None else set()
            for word in old - new:
                if _isbnish(word):
                    continue
                words = shard("p", postings, word, _WORD_SHARDS)
                ids = words.get(word)
                if ids is None or bid not in ids:
                    raise _Stale
                if len(ids) > 1:
                    words[word] = ids - {bid}
                    continue
                del words[word]
                for gram in _trigrams(word):
                    holders = shard("g", grams, gram, _GRAM_SHARDS)
                    left = holders.get(gram, frozenset()) - {word}
                    if left:
                        holders[gram] = left
                    else:
                        holders.pop(gram, None)
            for word in new - old:
                if _isbnish(word):
                    continue
                words = shard("p", postings, word, _WORD_SHARDS)
                ids = words.get(word)
                if ids is None:
                    words[word] = frozenset((bid,))
                    for gram in _trigrams(word):
                        holders = shard("g", grams, gram, _GRAM_SHARDS)
                        holders[gram] = holders.get(gram, frozenset()) | {word}
                else:
                    words[word] = ids | {bid}
            if digits is None:
                continue
            old_grams = {g for t in old if _isbnish(t) for g in _trigrams(t)}
            new_grams = {g for t in new if _isbnish(t) for g in _trigrams(t)}
            bit = 1 << bid
            for gram in old_grams - new_grams:
                bits = digits.get(gram, 0)
                if not bits & bit:
                    raise _Stale
                bits &= ~bit
                if bits:
                    digits[gram] = bits
                else:
                    del digits[gram]
            for gram in new_grams - old_grams:
                digits[gram] = digits.get(gram, 0) | bit
        return SearchIndex(postings, grams, digits)

    def find(self, word: str, books: Mapping[int, Mapping[str, Any]]) -> set[int]:
        """Ids of the books whose folded title, author or ISBN contains ``word`` (folded, not empty)."""
        if any(c.isspace() for c in word):  # not from a query split on whitespace: check every book
            return {bid for bid, book in books.items() if _contains(book, word)}
        found: set[int] = set()
        for token in self._words_containing(word):
            found.update(self.postings[hash(token) % _WORD_SHARDS][token])
        if _ISBNISH.issuperset(word):
            if self.digits is None:
                raise ValueError("the index has no ISBN part: see with_digits")
            if len(word) <= 3:
                bits = 0
                for gram, gram_bits in self.digits.items():
                    if word in gram:
                        bits |= gram_bits
                found.update(_bit_ids(bits))
            else:
                bits = -1
                for gram in _trigrams(word):
                    bits &= self.digits.get(gram, 0)
                    if not bits:
                        break
                found.update(bid for bid in _bit_ids(bits) if bid in books and _contains(books[bid], word))
        return found

    def _words_containing(self, word: str) -> Iterable[str]:
        if len(word) < 3:
            return [token for words in self.postings for token in words if word in token]
        sets = []
        for gram in _trigrams(word):
            holders = self.grams[hash(gram) % _GRAM_SHARDS].get(gram)
            if not holders:
                return ()
            sets.append(holders)
        sets.sort(key=len)
        candidates = sets[0].intersection(*sets[1:]) if len(sets) > 1 else sets[0]
        return candidates if len(word) == 3 else [token for token in candidates if word in token]


def _bit_ids(bits: int) -> list[int]:
    """The positions of the bits set in ``bits`` (a non-negative int)."""
    if bits <= 0:
        return []
    text = bin(bits)[:1:-1]  # least significant bit first
    found, at = [], text.find("1")
    while at >= 0:
        found.append(at)
        at = text.find("1", at + 1)
    return found


def _search_word(word: str) -> str:
    """A search word folded; an ISBN typed with hyphens is searched for as its digits."""
    word = fold(word)
    if len(word) > 1 and all(c in "0123456789-x" for c in word):
        return word.replace("-", "")
    return word
