"""Whole-call latency of one small row: logitcore's default backend against torch, in one
process, interleaved, best of repeats (issue: small calls must not lose to torch).

    python tools/small_call_latency.py [--classes 1000] [--threads 2]
"""

import argparse
import timeit

import numpy as np


def best_microseconds(call, number=20000, repeat=9):
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch

    import logitcore as lc

    torch.set_num_threads(args.threads)
    lc.set_num_threads(args.threads)
    x = np.random.default_rng(0).normal(size=(1, args.classes)).astype(np.float32)
    tx = torch.from_numpy(x)
    pairs = {
        "softmax": (lambda: lc.softmax(x), lambda: torch.softmax(tx, -1)),
        "log_softmax": (lambda: lc.log_softmax(x), lambda: torch.log_softmax(tx, -1)),
        "logsumexp": (lambda: lc.logsumexp(x), lambda: torch.logsumexp(tx, -1)),
    }
    for ours, theirs in pairs.values():  # warm-up: compilation, first allocations
        ours(), theirs()
    print(f"1x{args.classes} float32, {args.threads} threads, best of 9 x 20000 calls, "
          f"{args.rounds} interleaved rounds (us per call)")
    print("| op | logitcore | torch | torch / logitcore |")
    print("|---|---:|---:|---:|")
    for name, (ours, theirs) in pairs.items():
        our_times, their_times = [], []
        for _ in range(args.rounds):
            our_times.append(best_microseconds(ours))
            their_times.append(best_microseconds(theirs))
        ours_us, theirs_us = min(our_times), min(their_times)
        print(f"| {name} | {ours_us:.2f} | {theirs_us:.2f} | {theirs_us / ours_us:.2f} |")
    lc.softmax(x)
    print(f"backend that ran: {lc.last_dispatch()['backend']}")


if __name__ == "__main__":
    main()
