/*-------------------------------------------------------------------------
 *
 * context.c
 *	  What a model sees of the event it processes, and what an event sent
 *	  from a model inherits from it.
 *
 * digitaltwin.current_event() describes the event a worker's model call is
 * processing (dt_current_event, set by the worker around each call): its
 * id, model and twin, its kind, the application's time of the event
 * (events.event_time) and when it was queued, and for a message (an event
 * that a model sent with send() or an INSERT) the model and twin that sent
 * it.  Outside a model call it is an error: there is no current event.
 *
 * The columns that make an event a message are filled by their defaults,
 * which read the current event: outside a model they are NULL (and the
 * event time is the insert time, now()); inside one, the sending twin, and
 * the sending event's own event time, so that a chain of messages keeps the
 * time of the event that started it.  Writers have no INSERT privilege on
 * the sender columns, so an application cannot forge a message.  send()
 * inside a model sets the same values itself (messages.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_current_event);
PG_FUNCTION_INFO_V1(digitaltwin_default_event_time);
PG_FUNCTION_INFO_V1(digitaltwin_sender_model);
PG_FUNCTION_INFO_V1(digitaltwin_sender_twin);

/* The columns of digitaltwin.event_info. */
#define DT_INFO_ID			0
#define DT_INFO_MODEL		1
#define DT_INFO_TWIN_ID		2
#define DT_INFO_KIND		3
#define DT_INFO_EVENT_TIME	4
#define DT_INFO_ENQUEUED_AT	5
#define DT_INFO_SENDER_MODEL 6
#define DT_INFO_SENDER_TWIN	7
#define DT_INFO_TIMER		8
#define DT_INFO_RETRY_OF	9	/* version 1.7 */
#define DT_INFO_NCOLS		10

/* 'timer', 'retry', 'message' for an event a model sent, else 'event' */
const char *
dt_event_kind(const DtEvent *ev)
{
	if (ev->timer != NULL)
		return "timer";
	if (ev->retry_of != 0)
		return "retry";
	return ev->sender_model != NULL ? "message" : "event";
}

const char *
digitaltwin_current_event_kind(void)
{
	if (dt_current_event == NULL)
		return NULL;
	return dt_event_kind(dt_current_event->event);
}

TimestampTz
digitaltwin_current_event_time(void)
{
	return dt_current_event ? dt_current_event->event->event_time : DT_NOBEGIN;
}

Datum
digitaltwin_current_event(PG_FUNCTION_ARGS)
{
	const DtEvent *ev = dt_require_model_call("digitaltwin.current_event()",
											   "There is a current event only while a digitaltwin worker runs a model.",
											   NULL)->event;
	TupleDesc	desc;
	Datum		values[DT_INFO_NCOLS];
	bool		nulls[DT_INFO_NCOLS];

	/* the type has one attribute less before version 1.7 */
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE ||
		(desc->natts != DT_INFO_NCOLS && desc->natts != DT_INFO_RETRY_OF))
		elog(ERROR, "digitaltwin: digitaltwin.current_event() must return digitaltwin.event_info");
	desc = BlessTupleDesc(desc);

	memset(nulls, 0, sizeof(nulls));
	values[DT_INFO_ID] = Int64GetDatum(ev->id);
	values[DT_INFO_MODEL] = CStringGetTextDatum(ev->model);
	values[DT_INFO_TWIN_ID] = CStringGetTextDatum(ev->twin_id);
	values[DT_INFO_KIND] = CStringGetTextDatum(digitaltwin_current_event_kind());
	values[DT_INFO_EVENT_TIME] = TimestampTzGetDatum(ev->event_time);
	values[DT_INFO_ENQUEUED_AT] = TimestampTzGetDatum(ev->enqueued_at);
	values[DT_INFO_SENDER_MODEL] = ev->sender_model ? CStringGetTextDatum(ev->sender_model) : (Datum) 0;
	nulls[DT_INFO_SENDER_MODEL] = (ev->sender_model == NULL);
	values[DT_INFO_SENDER_TWIN] = ev->sender_twin ? CStringGetTextDatum(ev->sender_twin) : (Datum) 0;
	nulls[DT_INFO_SENDER_TWIN] = (ev->sender_twin == NULL);
	values[DT_INFO_TIMER] = ev->timer ? CStringGetTextDatum(ev->timer) : (Datum) 0;
	nulls[DT_INFO_TIMER] = (ev->timer == NULL);
	values[DT_INFO_RETRY_OF] = Int64GetDatum(ev->retry_of);
	nulls[DT_INFO_RETRY_OF] = (ev->retry_of == 0);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

/* Default of events.event_time: the insert time, or the sender's time. */
Datum
digitaltwin_default_event_time(PG_FUNCTION_ARGS)
{
	if (dt_current_event != NULL)
		PG_RETURN_TIMESTAMPTZ(dt_current_event->event->event_time);
	PG_RETURN_TIMESTAMPTZ(GetCurrentTransactionStartTimestamp());
}

/* Default of events.sender_model: the model sending, inside a model call. */
Datum
digitaltwin_sender_model(PG_FUNCTION_ARGS)
{
	if (dt_current_event == NULL)
		PG_RETURN_NULL();
	dt_messages_sent++;
	PG_RETURN_TEXT_P(cstring_to_text(dt_current_event->model->name));
}

/* Default of events.sender_twin: the twin sending, inside a model call. */
Datum
digitaltwin_sender_twin(PG_FUNCTION_ARGS)
{
	if (dt_current_event == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(dt_current_event->event->twin_id));
}
