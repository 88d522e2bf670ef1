"""Block-wise transfers (RFC 7959) for the CoAP endpoint, both roles.

Server side, :class:`BlockwiseServer`: Block1 request bodies are reassembled (§2.3) under the
per-peer limits of :class:`~dotsd.coap.exchange.EndpointConfig`, and a response body too large
for one message is sliced into Block2 parts (§2.4), the whole body kept for the requests of
its later parts. What it keeps lives in each peer's :class:`~dotsd.coap.exchange.PeerState`
(``uploads``, ``upload_bytes``, ``block2``), with one sweep timer per peer (``sweep``) that
frees what a peer abandons.

Client side, functions of a :class:`~dotsd.coap.exchange.ClientRequest`: the Block1 parts of
a request body larger than the peer takes (§2.5), and the Block2 parts of a response collected
into the whole body (§2.4). The endpoint sends what they build and matches the answers.

Sans-IO: ``now`` is an argument; time is the endpoint's timer heap.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Hashable, Mapping
from functools import partial
from typing import Final

from dotsd.coap.exchange import ClientRequest, EndpointConfig, Exchange, PeerState, Upload
from dotsd.coap.message import Block, Message, copy_message, error_response
from dotsd.coap.numbers import Code, OptionNumber
from dotsd.coap.timers import TimerHeap
from dotsd.ratelog import RateLimitedLog

__all__ = [
    "BLOCK_CACHE_LIFETIME",
    "BlockwiseServer",
    "add_block2",
    "block1_part",
    "first_block1",
    "next_block1_part",
    "next_block2_request",
    "resource_key",
    "too_large",
]

BLOCK_CACHE_LIFETIME: Final = 60.0  # how long partial uploads and kept bodies are held (s)


def resource_key(msg: Message) -> bytes:
    """Identifies a resource for block-wise state: Uri-Path and Uri-Query, raw."""
    return b"\x00".join(v for n, v in (msg.options or ())
                        if n in (OptionNumber.URI_PATH, OptionNumber.URI_QUERY))


def too_large(max_body_size: int) -> Message:
    """4.13 for a request body over ``max_body_size``; RFC 7959 §4: it carries Size1, the
    largest body accepted."""
    err = error_response(Code.REQUEST_ENTITY_TOO_LARGE, "request body too large")
    return err.add(OptionNumber.SIZE1, max_body_size)


class BlockwiseServer:
    """The endpoint's block-wise transfers as a server (see the module docstring).

    ``peers`` is the endpoint's own peer table (a peer removed there is not swept again);
    ``log_limit`` logs refusals under the per-peer limits at a bounded rate.
    """

    def __init__(self, config: EndpointConfig, timers: TimerHeap,
                 peers: Mapping[Hashable, PeerState], log_limit: RateLimitedLog) -> None:
        self.config = config
        self._timers = timers
        self._peers = peers
        self._log_limit = log_limit

    # --- Block1: request bodies (RFC 7959 §2.3) ----------------------------------------
    def reassemble_block1(self, state: PeerState, exchange: Exchange,
                          now: float) -> Message | None:
        """Collect the Block1 part ``exchange`` carries. None when the whole body is here (the
        request then carries it, without Block1); else the answer: 2.31 Continue asking for
        the next part, or the error that ends the upload."""
        msg = exchange.request
        block = exchange.block1
        assert block is not None
        key = resource_key(msg)
        upload = state.uploads.get(key)
        if block.num == 0:
            if upload is not None:
                self._drop_upload(state, key)  # the client starts over
            if not block.more:
                msg.remove(OptionNumber.BLOCK1)
                return None  # the whole body in one block
            reserved = max(len(msg.payload), msg.size1 or 0)
            refusal = self._upload_refusal(state, exchange.peer, reserved, now)
            if refusal is not None:
                return self._failed(state, key, self._busy(state, refusal, now))
            upload = state.uploads[key] = Upload(now + BLOCK_CACHE_LIFETIME, reserved)
            state.upload_bytes += reserved
        elif upload is None or upload.next_num != block.num or upload.expires <= now:
            return self._failed(state, key, error_response(
                Code.REQUEST_ENTITY_INCOMPLETE, f"block {block.num} out of sequence"))
        if block.more and len(msg.payload) != block.size:
            return self._failed(state, key, error_response(
                Code.BAD_REQUEST, "block size mismatch"))
        body = upload.body
        size = len(body) + len(msg.payload)
        if size > self.config.max_body_size:
            return self._failed(state, key, too_large(self.config.max_body_size))
        if size > upload.reserved:
            # More than its Size1 said (or it said none): hold more, if the peer has room.
            more = size - upload.reserved
            if state.upload_bytes + more > self.config.max_upload_bytes_per_peer:
                self._log_limit(now, "block-wise upload stopped peer=%r: %d bytes held "
                                "already", exchange.peer, state.upload_bytes)
                return self._failed(state, key, self._busy(
                    state, "too many bytes in block-wise uploads at once", now))
            state.upload_bytes += more
            upload.reserved = size
        body += msg.payload
        if not block.more:
            self._drop_upload(state, key)
            msg.payload = bytes(body)
            msg.remove(OptionNumber.BLOCK1)
            return None
        upload.next_num = block.num + 1
        upload.expires = now + BLOCK_CACHE_LIFETIME
        del state.uploads[key]
        state.uploads[key] = upload  # to the back: the dict stays in expiry order
        self._arm_sweep(state, exchange.peer, upload.expires)
        szx = min(block.szx, self.config.preferred_szx)
        return Message(code=Code.CONTINUE).add(OptionNumber.BLOCK1,
                                               Block(block.num, True, szx).encode())

    def _upload_refusal(self, state: PeerState, peer: Hashable, reserved: int,
                        now: float) -> str | None:
        """Why a new Block1 upload holding ``reserved`` bytes would pass the peer's limits,
        or None if it fits. Expired uploads are freed first: they do not count."""
        self._purge_uploads(state, now)
        config = self.config
        if len(state.uploads) >= config.max_uploads_per_peer:
            self._log_limit(now, "block-wise upload refused peer=%r: %d uploads under way",
                            peer, len(state.uploads))
            return "too many block-wise uploads at once"
        if state.upload_bytes + reserved > config.max_upload_bytes_per_peer:
            self._log_limit(now, "block-wise upload refused peer=%r: %d bytes held, %d more "
                            "announced", peer, state.upload_bytes, reserved)
            return "too many bytes in block-wise uploads at once"
        return None

    def _failed(self, state: PeerState, key: bytes, response: Message) -> Message:
        """Abandon the upload to ``key``; ``response`` is the answer (no Block1 option)."""
        self._drop_upload(state, key)
        return response

    def _busy(self, state: PeerState, reason: str, now: float) -> Message:
        """5.03 for an upload over the peer's limits; Max-Age (RFC 7252 §5.9.3.4) is when
        the oldest upload under way expires, the latest time a slot frees up."""
        wait = BLOCK_CACHE_LIFETIME
        for oldest in state.uploads.values():
            wait = oldest.expires - now
            break
        return error_response(Code.SERVICE_UNAVAILABLE, f"{reason}; try again later").add(
            OptionNumber.MAX_AGE, max(1, math.ceil(wait)))

    def _drop_upload(self, state: PeerState, key: bytes) -> None:
        upload = state.uploads.pop(key, None)
        if upload is not None:
            state.upload_bytes -= upload.reserved

    def _purge_uploads(self, state: PeerState, now: float) -> None:
        uploads = state.uploads
        while uploads:
            key, oldest = next(iter(uploads.items()))
            if oldest.expires > now:
                return
            del uploads[key]
            state.upload_bytes -= oldest.reserved

    # --- Block2: response bodies (RFC 7959 §2.4) ---------------------------------------
    def cached_block(self, state: PeerState, exchange: Exchange, now: float) -> Message | None:
        """The answer to a request for a later block of a body kept (cut to that block by
        :meth:`apply_block2`), or None if none is kept: the request goes to the application."""
        cached = state.block2.get(resource_key(exchange.request))
        if cached is None or cached[0] <= now:
            return None
        return copy_message(cached[1])

    def apply_block2(self, state: PeerState, exchange: Exchange, response: Message,
                     now: float) -> None:
        """Slice a body that does not fit into blocks; keep it for the rest."""
        asked = exchange.asked_block2
        preferred = self.config.preferred_szx
        req = exchange.request
        szx = min(asked.szx if asked else preferred, preferred)
        size = 1 << (szx + 4)
        body = response.payload
        if len(body) <= size and (asked is None or asked.num == 0):
            return
        num = asked.num if asked else 0
        if num * size >= len(body) and num > 0:
            response.code = Code.BAD_OPTION
            response.payload = b"block number out of range"
            response.options = None
            return
        if num == 0 and len(body) > size:
            if response.opt(OptionNumber.ETAG) is None:
                # RFC 9132 §4.4.2: a body sent block-wise carries an ETag, the same in every
                # block (RFC 7959 §2.4), so that a client can tell the parts of one
                # representation from those of the next (statuses change between blocks).
                response.set(OptionNumber.ETAG, entity_tag(body))
            full = copy_message(response)
            full.remove(OptionNumber.OBSERVE)
            self._keep_block2(state, exchange.peer, resource_key(req), full, now)
        chunk = body[num * size:(num + 1) * size]
        more = (num + 1) * size < len(body)
        response.payload = chunk
        response.set(OptionNumber.BLOCK2, Block(num, more, szx).encode())
        if num == 0:
            response.set(OptionNumber.SIZE2, len(body))

    def _keep_block2(self, state: PeerState, peer: Hashable, key: bytes, full: Message,
                     now: float) -> None:
        """Keep a whole response body for requests of its later blocks (RFC 7959 §2.4)."""
        kept = state.block2
        kept.pop(key, None)  # a newer body replaces it, at the back: expiry order
        limit = self.config.max_block2_bodies_per_peer
        while kept and len(kept) >= limit:
            del kept[next(iter(kept))]  # the oldest goes
        if limit > 0:
            expires = now + BLOCK_CACHE_LIFETIME
            kept[key] = (expires, full)
            self._arm_sweep(state, peer, expires)

    # --- expiry ------------------------------------------------------------------------
    def _arm_sweep(self, state: PeerState, peer: Hashable, when: float) -> None:
        """One timer per peer with block-wise state, at its oldest entry's expiry: what a
        peer abandons is freed even if it sends nothing more."""
        if state.sweep is None:
            state.sweep = self._timers.schedule(when, partial(self._sweep, state, peer))

    def _sweep(self, state: PeerState, peer: Hashable, now: float) -> None:
        state.sweep = None
        if self._peers.get(peer) is not state:
            return
        self._purge_uploads(state, now)
        kept = state.block2
        while kept:
            key = next(iter(kept))
            if kept[key][0] > now:
                break
            del kept[key]
        due = [upload.expires for upload in itertools.islice(state.uploads.values(), 1)]
        due += [entry[0] for entry in itertools.islice(kept.values(), 1)]
        if due:
            self._arm_sweep(state, peer, min(due))


# --- client side ---------------------------------------------------------------------------
def first_block1(req: ClientRequest, szx: int) -> Message:
    """RFC 7959 §2.5: the first Block1 part of a request whose body does not fit in one
    message; ``req`` keeps the body for the next parts."""
    req._block1_body = req.message.payload
    req._block1_szx = szx
    return block1_part(req, 0)


def block1_part(req: ClientRequest, num: int) -> Message:
    """Part ``num`` of ``req``'s body, in blocks of its current size (RFC 7959 §2.3)."""
    body = req._block1_body or b""
    size = 1 << (req._block1_szx + 4)
    part = copy_message(req.message)
    part.payload = body[num * size:(num + 1) * size]
    more = (num + 1) * size < len(body)
    part.set(OptionNumber.BLOCK1, Block(num, more, req._block1_szx).encode())
    if num == 0:
        part.set(OptionNumber.SIZE1, len(body))
    req._block1_num = num
    return part


def next_block1_part(req: ClientRequest, response: Message) -> Message | None:
    """After the answer to a Block1 part: the next part if it is 2.31 Continue asking for
    more (RFC 7959 §2.3), else None: the upload is over and ``response`` is the answer."""
    blk = response.block1
    if response.code == Code.CONTINUE and blk is not None and blk.more:
        if blk.szx < req._block1_szx:
            # The server asked for smaller blocks: renumber from the bytes sent.
            sent = (req._block1_num + 1) << (req._block1_szx + 4)
            req._block1_szx = blk.szx
            next_num = sent >> (blk.szx + 4)
        else:
            next_num = req._block1_num + 1
        return block1_part(req, next_num)
    req._block1_body = None
    return None


def add_block2(req: ClientRequest, response: Message, blk: Block,
               max_body_size: int) -> str | None:
    """Add the Block2 part ``blk`` of a response to the body ``req`` collects (RFC 7959
    §2.4); why the transfer fails, or None. After the last part, ``response`` carries the
    whole body, without Block2, under the request's token."""
    if blk.num == 0:
        req._block2_body = bytearray()
    body = req._block2_body
    if body is None or len(body) != blk.offset:
        req._block2_body = None
        return "block-wise response out of order"
    body += response.payload
    if blk.more:
        return "response body too large" if len(body) > max_body_size else None
    response.payload = bytes(body)
    req._block2_body = None
    response.remove(OptionNumber.BLOCK2)
    response.token = req.token
    return None


def next_block2_request(req: ClientRequest, blk: Block, etag: bytes | None = None
                        ) -> Message:
    """The request for the Block2 part after ``blk`` (RFC 7959 §2.4): the request again,
    without Observe or payload, with the ETag of the parts so far (RFC 9132 §4.4.2: "The
    DOTS client MUST include the same ETag value in subsequent GET requests")."""
    nxt = copy_message(req.message)
    nxt.remove(OptionNumber.OBSERVE)
    nxt.payload = b""
    nxt.set(OptionNumber.BLOCK2, Block(blk.num + 1, False, blk.szx).encode())
    if etag is not None:
        nxt.set(OptionNumber.ETAG, etag)
    return nxt


def entity_tag(body: bytes) -> bytes:
    """An ETag (RFC 7252 §5.10.6, 1-8 opaque bytes) for a representation: its digest."""
    return hashlib.blake2s(body, digest_size=8).digest()
