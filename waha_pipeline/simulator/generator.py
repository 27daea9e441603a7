"""Builds and grows a deterministic synthetic WhatsApp history from a DatasetSpec, shaped like the account the old
importer mangled.

Why its own code: the simulator is the referee. Every trap the importer must handle (chat-id kinds, lid
mappings, bursts around the 30-minute session timeout, shared seconds, malformed and duplicated messages,
engine pages shortened by hidden reactions) is generated here from plain rules, and `truth.py` derives the
expected CRM rows from the same generation facts, never from importer code.

Everything is a pure function of (seed, session name, sizes, anchor): `random.Random` seeded with a string is
stable across processes (sha512 of the string), so the same spec and anchor always give the same bytes.
"""

from __future__ import annotations

import math
import random

from waha_pipeline.simulator import engines as eng
from waha_pipeline.simulator.models import (
    BROADCAST, CONTENT_TYPES, DEFECTS, DIRECT, DIRECT_KINDS, DIRECT_OBJ, DIRECT_SWA, GROUP, LID_ALT, LID_DUP,
    LID_KINDS, LID_MAPPED, LID_UNKNOWN, NEWSLETTER, NO_TIMESTAMP, ONE_TO_ONE_KINDS, STATUS, Dataset, DatasetSpec,
    SessionSpec, SimChat, SimSession, StoredMessage, chat_listed,
)

_CONTENT_WEIGHTS = (70, 8, 3, 2, 5, 3, 3, 2, 2, 2)  # weights of CONTENT_TYPES, in order

TIMEOUT_SECONDS = 30 * 60  # the default session timeout the bursts are shaped around

_FIRST = ("Maria", "Ana", "João", "Pedro", "Lucas", "Juliana", "Carla", "Rafael", "Fernanda", "Bruno", "Camila",
          "Diego", "Patrícia", "Rodrigo", "Beatriz", "Gustavo", "Larissa", "Marcos", "Aline", "Thiago", "Renata",
          "Felipe", "Vanessa", "André", "Letícia", "Paulo", "Sofia", "Mateus", "Helena", "Ricardo")
_LAST = ("Souza", "Silva", "Oliveira", "Santos", "Pereira", "Lima", "Costa", "Ferreira", "Almeida", "Ribeiro",
         "Carvalho", "Gomes", "Martins", "Araújo", "Rocha", "Barbosa", "Melo", "Cardoso", "Teixeira", "Dias")
_PUSH_DECOR = ("", "", "", " 🌸", " ✨", " Vendas", " (trabalho)")
_PHRASES = ("Boa tarde, vocês entregam em Campinas?", "Qual o valor?", "Obrigado!", "Pode me mandar o catálogo?",
            "Ok, combinado", "Vou verificar e te retorno", "Chegou aqui, tudo certo", "Tem em estoque?",
            "Bom dia!", "Segue o comprovante", "Qual o prazo de entrega?", "Perfeito 👍", "Aceita pix?",
            "Amanhã passo aí", "Não recebi ainda", "Pode ser às 15h?", "Valeu!", "Preciso de 3 unidades",
            "Me liga quando puder", "Tudo bem sim, e você?")
_GROUP_NAMES = ("Equipe Vendas", "Família", "Condomínio Bloco B", "Fornecedores SP", "Futebol quinta",
                "Turma 2019", "Clientes VIP", "Logística")


def _phone(rng: random.Random, used: set[str]) -> str:
    while True:
        p = f"55{rng.randint(11, 99)}9{rng.randint(10_000_000, 99_999_999)}"
        if p not in used:
            used.add(p)
            return p


def _lid(rng: random.Random, used: set[str]) -> str:
    while True:
        lid = str(rng.randint(100_000_000_000_000, 299_999_999_999_999))
        if lid not in used:
            used.add(lid)
            return lid


def _number_name(rng: random.Random, phone: str) -> str:
    """A chat name that is 'just the number' (SPEC 6.3) in one of the formats phones show."""
    cc, area, rest = phone[:2], phone[2:4], phone[4:]
    return rng.choice((f"+{cc} {area} {rest[:5]}-{rest[5:]}", f"({area}) {rest[:5]}-{rest[5:]}", f"+{phone}"))


def _full_name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _allocate_kinds(n: int) -> list[str]:
    if n < 16:
        raise ValueError(f"a simulated session needs at least 16 chats to hold every chat kind, got {n}")
    fixed = {
        STATUS: 1, BROADCAST: 1, NEWSLETTER: 1,
        GROUP: max(1, round(0.04 * n)),
        LID_MAPPED: max(1, round(0.025 * n)),
        LID_DUP: max(1, round(0.02 * n)),
        LID_UNKNOWN: max(1, round(0.03 * n)),
        DIRECT_SWA: max(1, round(0.05 * n)),
        DIRECT_OBJ: max(1, round(0.10 * n)),
    }
    kinds = [k for k, c in fixed.items() for _ in range(c)]
    kinds += [DIRECT] * (n - len(kinds))
    return kinds


def _message_counts(rng: random.Random, n: int, total: int) -> list[int]:
    """Heavy-tailed (Pareto) counts, each >= 1, summing exactly to `total`."""
    weights = [rng.paretovariate(1.1) for _ in range(n)]
    cap = max(20, total // 12)

    def counts_for(k: float) -> list[int]:
        return [min(cap, max(1, int(w * k))) for w in weights]

    lo, hi = 0.0, float(total)
    for _ in range(60):
        mid = (lo + hi) / 2
        if sum(counts_for(mid)) < total:
            lo = mid
        else:
            hi = mid
    counts = counts_for(lo)
    diff = total - sum(counts)
    order = sorted(range(n), key=lambda i: -weights[i])
    i = 0
    while diff != 0 and i < 10 * n + abs(diff) * 2:
        j = order[i % max(1, min(n, 20))]
        if diff > 0:
            counts[j] += 1
            diff -= 1
        elif counts[j] > 1:
            counts[j] -= 1
            diff += 1
        i += 1
    return counts


def _burst_counts(rng: random.Random, counts: list[int], mean_target: float) -> list[int]:
    """Number of conversations (bursts) per chat, calibrated so the mean is ~mean_target."""
    jitter = [rng.uniform(0.6, 1.4) for _ in counts]

    def bursts(c: float) -> list[int]:
        return [min(n, max(1, round(c * n ** 0.75 * j))) for n, j in zip(counts, jitter)]

    lo, hi = 0.0, 10.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if sum(bursts(mid)) / max(1, len(counts)) < mean_target:
            lo = mid
        else:
            hi = mid
    return bursts(hi)


def _intra_gap(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.14:
        return 0  # same second as the previous message
    if r < 0.75:
        return rng.randint(1, 90)
    if r < 0.95:
        return rng.randint(91, 600)
    return rng.randint(601, TIMEOUT_SECONDS - 1)


def _timeline(rng: random.Random, n: int, n_bursts: int, anchor: int, history: int, pin_gap: bool) -> list[int]:
    """Ascending timestamps: n messages in n_bursts bursts separated by more than the 30-minute timeout.

    pin_gap: the first burst has an intra gap of exactly 1800 s (same session) and the gap to the next
    burst is exactly 1801 s (new session), pinning "strictly greater than the timeout".
    """
    sizes = [1] * n_bursts
    for _ in range(n - n_bursts):
        sizes[rng.randrange(n_bursts)] += 1
    starts = sorted(
        anchor - (rng.randint(0, 30 * 86400) if rng.random() < 0.3 else rng.randint(0, history))
        for _ in range(n_bursts)
    )
    out: list[int] = []
    prev_end: int | None = None
    for b, (size, planned) in enumerate(zip(sizes, starts)):
        if prev_end is None:
            t = planned
        elif pin_gap and b == 1:
            t = prev_end + TIMEOUT_SECONDS + 1
        else:
            t = max(planned, prev_end + TIMEOUT_SECONDS + 1 + rng.randint(0, 6 * 3600))
        out.append(t)
        for k in range(size - 1):
            t += TIMEOUT_SECONDS if (pin_gap and b == 0 and k == 0) else _intra_gap(rng)
            out.append(t)
        prev_end = t
    if out and out[-1] > anchor:
        shift = out[-1] - anchor + rng.randint(0, 3600)
        out = [t - shift for t in out]
    return out


def _exact(blob: bytes) -> bytes:
    """A right-sized copy: orjson's result keeps its (much larger) write buffer allocated, ~6 KB per message."""
    return bytes(memoryview(blob))


def _hex_id(rng: random.Random) -> str:
    return f"3EB0{rng.getrandbits(80):020X}"


def _gows_message(ctype: str, body: str | None, rng: random.Random) -> tuple[dict, dict]:
    """(top-level extras, _data.Message) for a content type, GOWS style; Info.Type/MediaType set by caller."""
    if ctype == "text":
        msg = {"conversation": body} if rng.random() < 0.7 else {"extendedTextMessage": {"text": body}}
        return {"hasMedia": False}, msg
    if ctype in ("image", "video", "document", "sticker", "audio", "voice"):
        mime = {"image": "image/jpeg", "video": "video/mp4", "document": "application/pdf",
                "sticker": "image/webp", "audio": "audio/mpeg", "voice": "audio/ogg; codecs=opus"}[ctype]
        key = {"image": "imageMessage", "video": "videoMessage", "document": "documentMessage",
               "sticker": "stickerMessage", "audio": "audioMessage", "voice": "audioMessage"}[ctype]
        inner: dict = {"mimetype": mime}
        if body:
            inner["caption"] = body
        if ctype == "voice":
            inner.update(PTT=True, seconds=rng.randint(2, 120))
        elif ctype == "audio":
            inner.update(PTT=False, seconds=rng.randint(30, 300))
        elif ctype == "document":
            inner["fileName"] = f"pedido-{rng.randint(1000, 9999)}.pdf"
        return {"hasMedia": True}, {key: inner}
    if ctype == "location":
        lat, lng = -23.5 - rng.random(), -46.6 - rng.random()
        loc = {"latitude": f"{lat:.6f}", "longitude": f"{lng:.6f}", "live": False, "name": None, "address": None,
               "url": None, "description": None, "thumbnail": None}
        return {"hasMedia": False, "location": loc}, {"locationMessage": {"degreesLatitude": lat,
                                                                          "degreesLongitude": lng}}
    if ctype == "contact":
        name = _full_name(rng)
        vcard = f"BEGIN:VCARD\nVERSION:3.0\nFN:{name}\nTEL;type=CELL:+55 11 9{rng.randint(1000, 9999)}-0000\nEND:VCARD"
        return {"hasMedia": False, "vCards": [vcard]}, {"contactMessage": {"displayName": name, "vcard": vcard}}
    # other: a poll (content type "other"); its question is the body
    return {"hasMedia": False}, {"pollCreationMessageV3": {"name": body, "options": [{"optionName": "Sim"},
                                                                                        {"optionName": "Não"}]}}


_INFO_TYPE = {"text": ("text", ""), "image": ("media", "image"), "video": ("media", "video"),
              "audio": ("media", "audio"), "voice": ("media", "ptt"), "document": ("media", "document"),
              "sticker": ("media", "sticker"), "location": ("media", "location"), "contact": ("media", "vcard"),
              "other": ("poll", "")}


class _SessionBuilder:
    """Builds one SimSession; all randomness comes from one Random seeded by (seed, session name)."""

    def __init__(self, spec: DatasetSpec, sess: SessionSpec, anchor: int) -> None:
        self.spec, self.sess, self.anchor = spec, sess, anchor
        self.rng = random.Random(f"waha-sim:{spec.seed}:{sess.name}")
        self.phones: set[str] = set()
        self.lid_pool: set[str] = set()
        self.ids: set[str] = set()
        self.seq = 0
        self.me_phone = _phone(self.rng, self.phones)
        self.me_lid = _lid(self.rng, self.lid_pool)
        self.me_push = f"Loja {self.rng.choice(_LAST)}"
        # Engine quirks draw from their own stream: the main stream (and so the shared facts) stays the same.
        self.erng = random.Random(f"waha-sim:{spec.seed}:{sess.name}:engine:{spec.engine}")
        self.quirk_seq = 0

    def new_hex(self) -> str:
        while True:
            h = _hex_id(self.rng)
            if h not in self.ids:
                self.ids.add(h)
                return h

    def build(self) -> SimSession:
        rng = self.rng
        n_chats = self.sess.chats or self.spec.chats
        target = self.sess.target_messages or self.spec.target_messages
        kinds = _allocate_kinds(n_chats)
        rng.shuffle(kinds)
        n_empty = 1 if n_chats >= 30 else 0
        n_malformed = 4 + (target >= 2000) + (target >= 5000)
        n_dups = max(1, target // 2500)
        good_total = target - n_malformed - n_dups
        lids: dict[str, str] = {}

        # identities
        chats: list[SimChat] = []
        persons: list[dict] = []  # for the message generator: per chat who speaks and how
        direct_idx = [i for i, k in enumerate(kinds) if k in DIRECT_KINDS]
        dup_partners = iter(direct_idx)
        partner_of: dict[int, int] = {}
        for i, k in enumerate(kinds):
            if k == LID_DUP:
                partner_of[i] = next(dup_partners)
        base_person: dict[int, dict] = {}
        for i, k in enumerate(kinds):
            if k in DIRECT_KINDS or k == LID_MAPPED:
                base_person[i] = self._person(_phone(rng, self.phones))
        for i, k in enumerate(kinds):
            person: dict | None = None
            if k in DIRECT_KINDS:
                person = base_person[i]
                phone = person["phone"]
                chat_id = f"{phone}@c.us"
                r = rng.random()
                name = person["full"] if r < 0.6 else (_number_name(rng, phone) if r < 0.85 else None)
                wire: str | dict = chat_id
                if k == DIRECT_OBJ:
                    wire = {"server": "c.us", "user": phone, "_serialized": chat_id}
                elif k == DIRECT_SWA:
                    wire = f"{phone}@s.whatsapp.net"
                known_lid = rng.random() < 0.2  # WAHA knows this phone's lid although there is no @lid chat
                if known_lid and phone not in lids.values():
                    lids[_lid(rng, self.lid_pool)] = phone
            elif k in LID_KINDS:
                lid = _lid(rng, self.lid_pool)
                chat_id = wire = f"{lid}@lid"
                if k == LID_MAPPED:
                    person = base_person[i]
                    lids[lid] = person["phone"]
                elif k == LID_DUP:
                    person = base_person[partner_of[i]]
                    # one phone has one lid: this chat's lid replaces any lid drawn for the partner's phone
                    for known in [known for known, pn in lids.items() if pn == person["phone"]]:
                        del lids[known]
                    lids[lid] = person["phone"]
                else:
                    person = self._person(None)
                r = rng.random()
                name = person["full"] if r < 0.35 else None
            elif k == GROUP:
                chat_id = wire = f"120363{rng.randint(10**11, 10**12 - 1)}@g.us"
                name = f"{rng.choice(_GROUP_NAMES)} {rng.randint(1, 99)}"
                members = [self._person(_phone(rng, self.phones)) for _ in range(rng.randint(3, 8))]
                for m in members[: rng.randint(0, 2)]:  # some participants appear as @lid
                    m["jid"] = f"{_lid(rng, self.lid_pool)}@lid"
                person = {"members": members}
            elif k == STATUS:
                chat_id = wire = "status@broadcast"
                name = None
                person = {"members": [self._person(_phone(rng, self.phones)) for _ in range(6)]}
            elif k == BROADCAST:
                chat_id = wire = f"{rng.randint(10**9, 10**10 - 1)}@broadcast"
                name = "Lista de transmissão promoções"
            else:
                chat_id = wire = f"{rng.randint(10**11, 10**12 - 1)}@newsletter"
                name = "Canal Novidades"
                person = {"full": name, "push": [(0, name)], "phone": None}
            chats.append(SimChat(id=chat_id, kind=k, wire_id=wire, name=name))
            persons.append(person or {})
        for _ in range(max(1, n_chats // 20)):  # mappings for phones that have no chat at all
            lids[_lid(rng, self.lid_pool)] = _phone(rng, self.phones)
        self._pick_lid_alt(chats, lids)

        # message volume and conversation structure
        empty = set(rng.sample(direct_idx, n_empty)) if n_empty else set()
        live = [i for i in range(n_chats) if i not in empty]
        counts = _message_counts(rng, len(live), good_total)
        bursts = _burst_counts(rng, counts, 2.55)
        history = self.spec.history_days * 86400
        multi = [j for j, b in enumerate(bursts) if b >= 2 and counts[j] >= 3 and kinds[live[j]] in ONE_TO_ONE_KINDS]
        pinned = set(rng.sample(multi, min(len(multi), max(2, len(multi) // 40))))
        for j, i in enumerate(live):
            times = _timeline(rng, counts[j], bursts[j], self.anchor, history, j in pinned)
            self._fill(chats[i], persons[i], times)

        self._add_reactions(chats)
        self._add_malformed(chats, n_malformed)
        self._add_duplicates(chats, n_dups)
        self._add_engine_rows(chats)
        self._add_hidden_bursts(chats)
        self._pick_list_quirks(chats)
        for chat in chats:
            chat.finalize()
        return SimSession(name=self.sess.name, status=self.sess.status, tenant_id=self.sess.tenant_id,
                          me_phone=self.me_phone, me_lid=self.me_lid, me_push_name=self.me_push,
                          chats=chats, lids=lids)

    def _person(self, phone: str | None) -> dict:
        rng = self.rng
        full = _full_name(rng)
        first = full.split()[0]
        push = [(0, first + rng.choice(_PUSH_DECOR))]
        if rng.random() < 0.1:  # changed their push name at some point: the latest inbound one wins
            push.append((self.anchor - rng.randint(0, 200 * 86400), rng.choice(_FIRST)))
        return {"phone": phone, "full": full, "push": sorted(push), "jid": f"{phone}@c.us" if phone else None}

    @staticmethod
    def _push_at(person: dict, ts: int) -> str:
        name = person["push"][0][1]
        for since, n in person["push"]:
            if ts >= since:
                name = n
        return name

    def _fill(self, chat: SimChat, person: dict, times: list[int]) -> None:
        rng = self.rng
        from_me = rng.random() < 0.25
        for pos, ts in enumerate(times):
            if pos > 0:
                new_burst = ts - times[pos - 1] > TIMEOUT_SECONDS
                if new_burst:
                    from_me = rng.random() < 0.25
                elif rng.random() < 0.55:
                    from_me = not from_me
            if chat.kind == BROADCAST:
                from_me = True
            elif chat.kind == NEWSLETTER:
                from_me = False
            self._emit(chat, person, ts, from_me)

    def _emit(self, chat: SimChat, person: dict, ts: int, from_me: bool, *, defect: str | None = None) -> None:
        rng = self.rng
        ctype = rng.choices(CONTENT_TYPES, _CONTENT_WEIGHTS)[0]
        if ctype == "text":
            body: str | None = f"{rng.choice(_PHRASES)} #{rng.randint(1, 9999)}"
        elif ctype == "other":
            body = "Qual horário prefere?"
        elif ctype in ("image", "video", "document") and rng.random() < 0.4:
            body = f"{rng.choice(_PHRASES)}"
        else:
            body = None
        me_jid = f"{self.me_phone}@c.us"
        participant: str | None = None
        speaker = person
        if chat.kind in (GROUP, STATUS):
            speaker = rng.choice(person["members"])
            participant = me_jid if from_me else speaker["jid"]
        h = self.new_hex()
        extras, message = _gows_message(ctype, body, rng)
        ack = rng.randint(1, 4) if from_me else 3
        if chat.kind == LID_ALT:  # only the contact writes: every message carries the phone (SenderAlt)
            from_me, ack = False, 3
        ext_id = f"{'true' if from_me else 'false'}_{chat.id}_{h}" + (f"_{participant}" if participant else "")
        push = self.me_push if from_me else self._push_at(speaker, ts)
        quirk = self._quirk(ctype) if defect is None else None
        if quirk == eng.ZERO_TIME:
            defect = NO_TIMESTAMP
        elif quirk in (eng.REVOKED, eng.CIPHERTEXT):
            ctype, body = "other", None
        facts = {"chat_id": chat.id, "is_group": chat.kind == GROUP, "hex": h, "ts": ts, "from_me": from_me,
                 "ctype": ctype, "body": body, "participant": participant, "push": push, "ack": ack,
                 "message": message, "extras": extras, "me_jid": me_jid, "ext_id": ext_id,
                 "info_type": _INFO_TYPE[ctype], "alt_phone": chat.alt_phone, "quirk": quirk, "defect": defect}
        blob, alt = eng.encode(self.spec.engine, facts, legacy=self.spec.legacy)
        ext_id_out = None if defect == "missing_id" else ext_id
        self.seq += 1
        chat.entries.append(StoredMessage(
            ts=ts, sort_id=ext_id_out or "", seq=self.seq, from_me=from_me, blob=_exact(blob),
            external_id=ext_id_out, body=body, content_type=ctype, push_name=None if from_me else push,
            participant=participant, defect=defect, alt=None if alt is None else _exact(alt)))

    def _quirk(self, ctype: str) -> str | None:
        """The wire quirk of one good message, from the engine's own random stream (the facts stay the same)."""
        r = self.erng.random()
        engine = self.spec.engine
        self.quirk_seq += 1
        if engine == "gows":  # a zero Go time serializes as null; Info.Timestamp keeps it, or is zero too
            return eng.ZERO_TIME if self.quirk_seq % 700 == 350 else (eng.NULL_TS if r < 0.02 else None)
        if engine == "noweb":  # history rows stored with protobuf Long times
            return eng.LONG_TS if r < 0.05 else None
        if ctype == "image" and r < 0.3:
            return eng.NO_DIRECT_PATH
        if ctype == "text":
            return eng.REVOKED if r < 0.01 else (eng.CIPHERTEXT if r < 0.015 else None)
        return None

    def new_engine_hex(self) -> str:
        while True:
            h = _hex_id(self.erng)
            if h not in self.ids:
                self.ids.add(h)
                return h

    def _pick_lid_alt(self, chats: list[SimChat], lids: dict[str, str]) -> None:
        """Turn a third of the unknown @lid chats into LID_ALT: /lids does not know them, their messages carry the
        phone. Every other one, the first included, shares the phone of a @c.us chat with no known lid (merged)."""
        erng = self.erng
        unknown = [c for c in chats if c.kind == LID_UNKNOWN]
        known_pn = set(lids.values())
        partners = [c for c in chats if c.kind in DIRECT_KINDS and c.id.split("@")[0] not in known_pn]
        erng.shuffle(partners)
        for k, chat in enumerate(erng.sample(unknown, max(1, len(unknown) // 3)) if unknown else []):
            chat.kind = LID_ALT
            if k % 2 == 0 and partners:
                chat.alt_phone = partners.pop().id.split("@")[0]
            else:
                chat.alt_phone = _phone(erng, self.phones)

    def _add_engine_rows(self, chats: list[SimChat]) -> None:
        """Non-message rows of the engine: NOWEB protocol rows (revoke/edit; served only by NOWEB <= 2024, else
        dropped after slicing), WEBJS system notices (served)."""
        engine, erng, me_jid = self.spec.engine, self.erng, f"{self.me_phone}@c.us"
        if engine == "gows":
            return
        for chat in chats:
            good = [e for e in chat.entries if e.blob is not None and e.row is None and e.defect is None]
            if not good:
                continue
            good.sort(key=lambda e: e.ts)
            if engine == "noweb":
                for e in good:
                    if erng.random() >= 0.02:
                        continue
                    h = self.new_engine_hex()
                    edit = erng.random() < 0.5
                    ts = min(self.anchor, e.ts + erng.randint(1, 120))
                    blob, _ = eng.noweb_protocol_row(chat.id, h, ts, e.from_me, e.external_id.split("_")[2]
                                                     if e.external_id else h, edit, erng.random() < 0.05)
                    self._row(chat, ts, f"{'true' if e.from_me else 'false'}_{chat.id}_{h}", e.from_me,
                              blob if self.spec.legacy else None, None, eng.PROTOCOL)
                continue
            notices: list[tuple[int, str]] = []
            if erng.random() < 0.3:
                notices.append((good[0].ts - 1, "e2e_notification"))
            if chat.kind == GROUP:
                notices.append((good[0].ts - 2, "gp2"))
            if erng.random() < 0.08:
                notices.append((good[erng.randrange(len(good))].ts, "notification_template"))
            if erng.random() < 0.1:
                notices.append((good[erng.randrange(len(good))].ts + 1, "call_log"))
            for ts, notice in notices:
                h = self.new_engine_hex()
                ts = min(self.anchor, ts)
                blob, alt = eng.webjs_notice_row(chat.id, h, ts, me_jid, notice)
                self._row(chat, ts, f"false_{chat.id}_{h}", False, blob, alt, eng.SYSTEM)

    def _row(self, chat: SimChat, ts: int, ext_id: str, from_me: bool, blob: bytes | None, alt: bytes | None,
             reason: str) -> None:
        self.seq += 1
        chat.entries.append(StoredMessage(
            ts=ts, sort_id=ext_id, seq=self.seq, from_me=from_me, blob=None if blob is None else _exact(blob),
            external_id=ext_id, body=None, content_type="other", push_name=None, participant=None, defect=None,
            alt=None if alt is None else _exact(alt), row=reason))

    def _add_hidden_bursts(self, chats: list[SimChat]) -> None:
        """A reaction burst just before the newest message of a few busy 1:1 chats: more than two pages of rows
        the engine drops after slicing, so a page comes back empty while later offsets still hold messages."""
        n, size = self.spec.hidden_bursts, self.spec.hidden_burst_rows
        if n <= 0 or size <= 0:
            return
        hosts = []
        for chat in chats:
            if chat.kind not in (DIRECT, LID_MAPPED):
                continue
            good = sorted((e for e in chat.entries if e.blob is not None and e.row is None and e.defect is None),
                          key=lambda e: e.ts)
            if len(good) >= 3 and good[-1].ts - good[-2].ts >= 2:  # room for a second of its own
                hosts.append((good[-1].ts, chat.id, chat, good))
        hosts.sort(key=lambda h: (-h[0], h[1]))
        for _, _, chat, good in hosts[:n]:
            ts = good[-1].ts - 1  # after every other message but the newest: one contiguous run
            mine = self.erng.random() < 0.5
            for _ in range(size):
                h = self.new_engine_hex()
                self._row(chat, ts, f"{'true' if mine else 'false'}_{chat.id}_{h}", mine, None, None, eng.REACTION)

    def _pick_list_quirks(self, chats: list[SimChat]) -> None:
        """NOWEB and WEBJS chat lists: some chats with no activity time, some with a stale one."""
        if self.spec.engine == "gows":
            return
        for chat in chats:
            r = self.erng.random()
            chat.list_quirk = "missing" if r < 0.03 else ("stale" if r < 0.08 else None)

    def _add_reactions(self, chats: list[SimChat]) -> None:
        """Hidden items the server drops after slicing a page (GOWS skips reactions): pages come back short."""
        every = self.spec.reaction_every
        if every <= 0:
            return
        k = 0
        for chat in chats:
            for e in list(chat.entries):
                k += 1
                if k % every:
                    continue
                self.seq += 1
                h = self.new_hex()
                rid = f"{'false' if e.from_me else 'true'}_{chat.id}_{h}"
                chat.entries.append(StoredMessage(
                    ts=min(self.anchor, e.ts + self.rng.randint(0, 5)), sort_id=rid, seq=self.seq, from_me=not e.from_me,
                    blob=None, external_id=rid, body=None, content_type="reaction", push_name=None,
                    participant=None, defect=None, row=eng.REACTION))

    def _good_one_to_one(self, chats: list[SimChat]) -> list[SimChat]:
        return [c for c in chats if c.kind in ONE_TO_ONE_KINDS
                and sum(1 for e in c.entries if e.blob is not None and e.defect is None) >= 2]

    def _add_malformed(self, chats: list[SimChat], n: int) -> None:
        rng = self.rng
        hosts = self._good_one_to_one(chats)
        for k in range(n):
            chat = hosts[rng.randrange(len(hosts))]
            good = [e for e in chat.entries if e.blob is not None and e.defect is None]
            # sit next to a recent message of the chat so typical windows include it
            anchor_msg = max(good, key=lambda e: e.ts)
            self._emit(chat, self._host_person(good), anchor_msg.ts, rng.random() < 0.5,
                       defect=DEFECTS[k % len(DEFECTS)])

    @staticmethod
    def _host_person(good: list[StoredMessage]) -> dict:
        names = [e.push_name for e in good if e.push_name]
        return {"push": [(0, names[-1] if names else "Cliente")], "jid": None}

    def _add_duplicates(self, chats: list[SimChat], n: int) -> None:
        rng = self.rng
        hosts = self._good_one_to_one(chats)
        for _ in range(n):
            chat = hosts[rng.randrange(len(hosts))]
            good = [e for e in chat.entries if e.blob is not None and e.defect is None]
            e = good[rng.randrange(len(good))]
            self.seq += 1
            chat.entries.append(StoredMessage(
                ts=e.ts, sort_id=e.sort_id, seq=self.seq, from_me=e.from_me, blob=e.blob, external_id=e.external_id,
                body=e.body, content_type=e.content_type, push_name=e.push_name, participant=e.participant,
                defect=None, alt=e.alt, row=e.row))


def build_dataset(spec: DatasetSpec, anchor: int | None = None) -> Dataset:
    """Build every session of the spec. `anchor` (Unix s) overrides spec.anchor; None -> now, floored."""
    import time

    if anchor is None:
        anchor = spec.anchor if spec.anchor is not None else int(time.time())
    anchor = int(math.floor(anchor))
    names = [s.name for s in spec.sessions]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"session names must be unique and non-empty, got {names}")
    # Millions of long-lived objects: the simulator server's entries build them inside process_tuning.long_lived().
    sessions = {s.name: _SessionBuilder(spec, s, anchor).build() for s in spec.sessions}
    return Dataset(spec=spec, anchor=anchor, sessions=sessions)


# ---------------------------------------------------------------------------------------------- growth

class _Grower(_SessionBuilder):
    """The session builder's generator over an existing session: the same message and chat rules (and engine
    wire shapes), drawing from a stream of its own so a growth never changes what was built."""

    def __init__(self, spec: DatasetSpec, sess: SimSession, stream: str, at: int) -> None:
        # Not the builder's __init__: that one draws a new account identity; a growth keeps the session's.
        self.spec, self.anchor = spec, at
        self.rng = random.Random(f"waha-sim:{spec.seed}:{sess.name}:grow:{stream}")
        self.erng = random.Random(f"waha-sim:{spec.seed}:{sess.name}:grow:{stream}:engine:{spec.engine}")
        self.quirk_seq = 0
        self.ids: set[str] = set()
        self.lid_pool = set(sess.lids)
        self.phones = {sess.me_phone, *sess.lids.values()}
        for chat in sess.chats:
            if chat.kind in DIRECT_KINDS:
                self.phones.add(chat.id.split("@", 1)[0])
            if chat.alt_phone:
                self.phones.add(chat.alt_phone)
        self.seq = max((e.seq for c in sess.chats for e in c.entries), default=0)
        self.me_phone, self.me_lid, self.me_push = sess.me_phone, sess.me_lid, sess.me_push_name

    def person_of(self, chat: SimChat) -> dict:
        """Who speaks in an existing 1:1 chat: its latest inbound push name (the generator's per-chat person is
        not kept after the build)."""
        return self._host_person([e for e in chat.entries if e.blob is not None and e.row is None])


def _growable(chat: SimChat, spec: DatasetSpec) -> bool:
    """An importable 1:1 chat with served messages whose chat-list time is the true one (no NOWEB/WEBJS list
    quirk), so a new message moves what the chat list shows exactly as it moves the chat."""
    return (chat.kind in ONE_TO_ONE_KINDS and chat.list_quirk is None and chat_listed(chat, spec)
            and chat.conversation_timestamp is not None)


def _spread(rng: random.Random, total: int, hosts: int) -> list[int]:
    """`total` items over `hosts` hosts, each >= 1 (hosts <= total)."""
    counts = [1] * hosts
    for _ in range(total - hosts):
        counts[rng.randrange(hosts)] += 1
    return counts


def grow_session(spec: DatasetSpec, sess: SimSession, *, new_messages: int = 0, into_chats: int | None = None,
                 new_chats: int = 0, late_messages: int = 0, at: int, since: int | None = None,
                 seed: int = 0) -> dict:
    """Add messages and chats to a built session with the generator's own rules (see SimulatorState.grow).

    Deterministic: a pure function of the session as it stands, `at`, `since` and `seed` (the stream is keyed by
    the session's highest store sequence too, so repeating a seed on a grown session draws new ids).
    """
    since = at if since is None else since
    if since > at:
        raise ValueError("since must not be later than at")
    g = _Grower(spec, sess, f"{seed}:{max((e.seq for c in sess.chats for e in c.entries), default=0)}", at)
    rng = g.rng
    candidates = [c for c in sess.chats if _growable(c, spec)]
    added: dict[str, dict[str, list[str]]] = {"new_messages": {}, "new_chats": {}, "late_messages": {}}
    touched: dict[int, SimChat] = {}
    rejects = 0

    def emit(chat: SimChat, person: dict, times: list[int], what: str) -> None:
        nonlocal rejects
        n = len(chat.entries)
        g._fill(chat, person, times)
        new = chat.entries[n:]
        added[what].setdefault(chat.id, []).extend(e.external_id or "" for e in new)
        rejects += sum(1 for e in new if e.defect is not None)
        touched[id(chat)] = chat

    def oldest(chat: SimChat) -> int:
        return min(e.ts for e in chat.entries if e.blob is not None)

    # new messages: the last one of each chat at `at`, the others a few seconds before it, none before `since`
    # nor before the chat's newest message (they append, so the chat list's time moves to `at`)
    hosts = [c for c in candidates if c.conversation_timestamp <= at]  # type: ignore[operator]
    k = min(len(hosts), new_messages, into_chats if into_chats is not None else -(-new_messages // 3))
    if new_messages and k < 1:
        raise ValueError("no chat can take new messages at that time")
    for chat, n in zip(rng.sample(hosts, k), _spread(rng, new_messages, k) if k else []):
        floor = max(since, chat.conversation_timestamp)  # type: ignore[type-var]
        times = [at]
        while len(times) < n:
            times.append(max(floor, times[-1] - rng.randint(0, 90)))
        emit(chat, g.person_of(chat), times[::-1], "new_messages")

    # late history: inside the chat's span, strictly before its newest served message (the list time stays)
    spans = [c for c in candidates if id(c) not in touched
             and c.conversation_timestamp > oldest(c)]  # type: ignore[operator]
    k = min(len(spans), late_messages, -(-late_messages // 3))
    if late_messages and k < 1:
        raise ValueError("no chat has a span to take late messages")
    for chat, n in zip(rng.sample(spans, k), _spread(rng, late_messages, k) if k else []):
        first, newest = oldest(chat), chat.conversation_timestamp
        times = sorted(rng.randint(first, newest - 1) for _ in range(n))  # type: ignore[operator]
        emit(chat, g.person_of(chat), times, "late_messages")

    # new 1:1 chats (@c.us): a short conversation ending at `at`
    for _ in range(new_chats):
        person = g._person(_phone(rng, g.phones))
        phone = person["phone"]
        r = rng.random()
        name = person["full"] if r < 0.6 else (_number_name(rng, phone) if r < 0.85 else None)
        chat = SimChat(id=f"{phone}@c.us", kind=DIRECT, wire_id=f"{phone}@c.us", name=name)
        times = [at]
        for _ in range(rng.randint(1, 4)):
            times.append(times[-1] - _intra_gap(rng))
        emit(chat, person, times[::-1], "new_chats")
        sess.chats.append(chat)
        sess.chats_by_id[chat.id] = chat

    for chat in touched.values():
        chat.finalize()
    return {
        "at": at, "since": since, "seed": seed,
        "new_messages": sum(map(len, added["new_messages"].values())),
        "new_chats": len(added["new_chats"]),
        "new_chat_messages": sum(map(len, added["new_chats"].values())),
        "late_messages": sum(map(len, added["late_messages"].values())),
        "rejects": rejects,
        "chats": {what: sorted(by_chat) for what, by_chat in added.items()},
        "external_ids": {what: sorted(i for ids in by_chat.values() for i in ids) for what, by_chat in added.items()},
    }
