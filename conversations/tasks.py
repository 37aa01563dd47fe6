from celery import shared_task


@shared_task
def conversation_title(conversation_id: str) -> None:
    pass


@shared_task
def conversation_summarize(conversation_id: str, upto_message_id: str) -> None:
    pass
