import asyncio, time, os, json
import httpx
from tests.support.fake_openai import FakeOpenAI, Reply

async def test_probe(api: httpx.AsyncClient, fake_llm: FakeOpenAI, live_app, workers, redis_server) -> None:
    from celery import Celery
    c = Celery(broker=redis_server.url + "/0", set_as_current=False)
    fake_llm.respond_with(lambda req: Reply(text="x", delay_s=1.0))
    for attempt in range(3):
        t0 = time.time()
        calls = [asyncio.create_task(api.post("/api/llm/generate", json={"prompt": f"p{i}", "timeout_s": 30})) for i in range(2)]
        await asyncio.sleep(0.5)
        i = c.control.inspect(destination=["llm_q@test"], timeout=1)
        act = (i.active() or {}).get("llm_q@test", [])
        res = (i.reserved() or {}).get("llm_q@test", [])
        await asyncio.gather(*calls)
        took = time.time() - t0
        print(f"PROBE attempt {attempt}: took {took:.2f} active={[(a['id'][:6], a['worker_pid']) for a in act]} reserved={len(res)}", flush=True)
        if took > 1.8:
            st = i.stats().get("llm_q@test", {})
            print("PROBE pool", json.dumps(st.get("pool"))[:600])
            os.system(f"ps -o pid,ppid,stat,etime,wchan:20 --ppid {workers['llm_q'].proc.pid}")
