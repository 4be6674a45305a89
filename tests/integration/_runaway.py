"""A contract with a runaway function, deployed by the integration tests."""

from kyodo.contract import Context, Contract, function


class Runaway(Contract):
    @function
    def spin(self, ctx: Context) -> int:
        n = 0
        while True:
            n += 1

    @function
    def ok(self, ctx: Context) -> str:
        return "still here"
