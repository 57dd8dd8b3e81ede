"""The poll-cycle benchmark (`make bench`): simulated Nightscout sites on 127.0.0.1,
one real poll cycle in its own process, and a one-after-another baseline."""
