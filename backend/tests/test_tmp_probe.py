import asyncio, time, os
import httpx
from tests.support.fake_openai import FakeOpenAI, Reply
from tests.test_pipelines import answer, start, wait_run

async def test_probe(api: httpx.AsyncClient, fake_llm: FakeOpenAI, live_app, workers) -> None:
    from celery import Celery
    fake_llm.respond_with(lambda req: Reply(text="late", delay_s=8) if req.prompt == "long" else answer(req))
    run_id = (await start(api, [{"name": "long", "prompt_template": "long"}])).json()["run_id"]
    fake_llm.wait_for_requests(1)
    pid = workers["llm_q"].proc.pid
    os.system(f"ps -o pid,ppid,stat,etime,cmd --ppid {pid} | cut -c1-80")
    resp = await api.delete(f"/api/pipelines/runs/{run_id}")
    print(resp.json())
    for i in range(6):
        await asyncio.sleep(0.5)
        os.system(f"ps -o pid,ppid,stat,etime,wchan:20,cmd --ppid {pid} | cut -c1-100")
