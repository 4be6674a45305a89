"""A dict- and string-heavy contract: its results must not depend on hash seeds."""

from typing import Any

from kyodo.contract import Context, Contract, function, sha256_hex


class Mixer(Contract):
    @function
    def mix(self, ctx: Context, words: list) -> dict[str, Any]:
        counts = {}
        for word in words:
            counts[word] = counts.get(word, 0) + 1
        index = {sha256_hex(w)[:8]: w for w in counts}
        ctx.put(f"counts/{ctx.tx_id}", counts)
        ctx.put(f"index/{ctx.tx_id}", index)
        ctx.emit("Mixed", {"first": sorted(index)[0], "text": str(counts)})
        return {"distinct": len(counts), "order": list(counts)}
