"""Simulated type 1 days for `make replay`, from simglucose (the UVa/Padova simulator).

Each day is one virtual patient with a seeded random meal scenario and a basal-bolus
therapy whose meal boluses are imperfect, as people's are: three in ten overestimate the
meal (30% to 90% too much insulin), one in ten is forgotten, the rest are within -25% to
+20%, and the basal rate is up to 10% short or 20% over for the day. That gives real lows
after over-boluses and real highs after missed ones. The sensor is simglucose's 5-minute
CGM with its own noise; values are shown as a Dexcom uploads them (whole mg/dL, 39 for LOW
under 40, 401 for HIGH over 400), and a few uploads never arrive.

simglucose runs offline; the seed fixes everything, so every run replays the same days.
"""
from __future__ import annotations

import logging
import random
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

PATIENTS = ("adult#001", "adult#004", "adult#007", "adolescent#002", "adolescent#006", "child#003")
SAMPLE_MINUTES = 5
DROPPED_UPLOADS = 0.02  # share of CGM readings that never reach Nightscout


@dataclass(frozen=True)
class Sample:
    minute: float  # minutes after the day's midnight (UTC)
    true_mgdl: float  # the simulator's blood glucose: what really happened
    cgm: int  # what the sensor uploaded: 39 is Dexcom's LOW, 401 its HIGH
    uploaded: bool  # False for a reading lost on the way to Nightscout


@dataclass(frozen=True)
class Day:
    patient: str
    seed: int
    samples: tuple[Sample, ...]


def dexcom_value(cgm: float) -> int:
    value = round(cgm)
    return 39 if value < 40 else 401 if value > 400 else value


def simulate_day(patient: str, seed: int, start: datetime = datetime(2026, 1, 5)) -> Day:
    """One day of `patient`, seeded by `seed`."""
    warnings.simplefilter("ignore")  # simglucose imports pkg_resources and gym, which warn
    logging.getLogger("simglucose").setLevel(logging.WARNING)
    from simglucose.actuator.pump import InsulinPump
    from simglucose.controller.basal_bolus_ctrller import BBController
    from simglucose.patient.t1dpatient import T1DPatient
    from simglucose.sensor.cgm import CGMSensor
    from simglucose.simulation.env import T1DSimEnv
    from simglucose.simulation.scenario_gen import RandomScenario

    class ImperfectBolus(BBController):
        """Basal-bolus therapy as people really give it: misjudged meals, forgotten boluses."""

        def __init__(self, rng: random.Random) -> None:
            super().__init__(target=140)
            self.rng = rng
            self.basal_error = rng.uniform(0.9, 1.2)

        def policy(self, observation: Any, reward: Any, done: Any, **info: Any) -> Any:
            action = super().policy(observation, reward, done, **info)
            bolus = action.bolus
            if bolus > 0:
                chance = self.rng.random()
                if chance < 0.1:
                    bolus = 0.0  # forgotten
                elif chance < 0.4:
                    bolus *= self.rng.uniform(1.3, 1.9)  # carbohydrates overestimated
                else:
                    bolus *= self.rng.uniform(0.75, 1.2)
            return type(action)(basal=action.basal * self.basal_error, bolus=bolus)

    rng = random.Random(f"{patient}:{seed}")
    env = T1DSimEnv(T1DPatient.withName(patient), CGMSensor.withName("GuardianRT", seed=seed),
                    InsulinPump.withName("Insulet"), RandomScenario(start, seed=seed))
    therapy = ImperfectBolus(rng)
    observation, reward, done, info = env.reset()
    samples = []
    end = start + timedelta(days=1)
    while env.time < end:
        action = therapy.policy(observation, reward, done, **info)
        observation, reward, done, info = env.step(action)
        minute = (env.time - start).total_seconds() / 60
        samples.append(Sample(minute, float(info["bg"]), dexcom_value(observation.CGM),
                              rng.random() >= DROPPED_UPLOADS))
    return Day(patient, seed, tuple(samples))
