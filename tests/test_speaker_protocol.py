"""Whose voice counts on the dashboard protocol (issue 14): labelled points, the summary over counted ones only."""

from __future__ import annotations

import asyncio
import dataclasses

from websockets.asyncio.client import connect

from monitor.live.events import SessionInfo
from monitor.serve import protocol
from tests.test_server_protocol import (SESSION, emit, make_point, make_server, recv_json,  # noqa: F401 (fixture)
                                        recv_type, wait_for, ws_url)


def test_point_body_carries_the_speaker_only_when_attributed():
    plain = protocol.point_body(make_point(0))
    assert not {"speaker", "speaker_score", "counted"} & set(plain)  # a session without a voiceprint: as before
    other = protocol.point_body(dataclasses.replace(make_point(1), speaker="clinician", speaker_score=0.812345,
                                                    counted=False))
    assert (other["speaker"], other["speaker_score"], other["counted"]) == ("clinician", 0.8123, False)


def test_other_voices_are_streamed_but_left_out_of_the_summary(make_server, monkeypatch):  # noqa: F811
    speakers = {"counting": "patient", "patient": True, "clinician": True, "encoder": "x", "threshold": 0.86}
    session = dataclasses.replace(SESSION, settings={**SESSION.settings, "speakers": speakers})
    assert isinstance(session, SessionInfo)
    monkeypatch.setattr("tests.test_server_protocol.SESSION", session)
    server = make_server()
    emit(server, dataclasses.replace(make_point(0), speaker="patient", speaker_score=0.9, counted=True))
    emit(server, dataclasses.replace(make_point(1), speaker="clinician", speaker_score=0.88, counted=False))
    wait_for(lambda: server.stats["points"] == 2)

    async def main():
        ws = await connect(ws_url(server), open_timeout=10)
        hello, snapshot = await recv_json(ws), await recv_json(ws)
        await ws.close()
        return hello, snapshot

    hello, snapshot = asyncio.run(main())
    assert hello["speakers"] == {"counting": "patient", "patient": True, "clinician": True}
    assert snapshot["points_total"] == 2 and len(snapshot["points"]) == 2
    assert snapshot["summary"]["points"] == 1 and snapshot["summary"]["speech_seconds"] == 1.5
    assert [p["counted"] for p in snapshot["points"]] == [True, False]


def test_without_attribution_hello_says_every_voice_counts(make_server):  # noqa: F811
    server = make_server()

    async def main():
        ws = await connect(ws_url(server), open_timeout=10)
        hello = await recv_json(ws)
        await ws.close()
        return hello

    assert asyncio.run(main())["speakers"] == {"counting": "all", "patient": False, "clinician": False}
