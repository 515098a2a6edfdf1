"""A consumer service of your own: remember each finished video's URL (wazza-hooks example)."""

from consumers import JobEvent, Service, Tx


async def remember_output(event: JobEvent, tx: Tx) -> None:
    await tx.execute(
        "INSERT INTO deliveries (job_id, url) VALUES (?, ?) ON CONFLICT (job_id) DO NOTHING",
        event.job_id,
        (event.output or {}).get("url"),
    )


service = Service(
    name="deliveries",
    event_types=["job.completed"],
    handler=remember_output,
    schema=["CREATE TABLE IF NOT EXISTS deliveries (job_id TEXT PRIMARY KEY, url TEXT)"],
)
