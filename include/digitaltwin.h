/*-------------------------------------------------------------------------
 *
 * digitaltwin.h
 *	  Public interface for model functions written in C.
 *
 * A model is a pair of ordinary SQL-callable functions registered with
 * digitaltwin.create_model():
 *
 *	  process(twin_id text, state S, event jsonb) RETURNS S
 *	  init(twin_id text) RETURNS S					(optional)
 *
 * S may be jsonb, a composite type, or bytea (a fixed binary struct costs no
 * JSON parsing; see DT_STATE_* below).  A background worker calls process
 * once per event of the twin, in order, with the twin's current state (NULL
 * for a new twin of a model without init).  Returning NULL ends the twin.
 *
 * Inside process or init, the functions below describe the event being
 * processed and raise alerts.  They are exported by digitaltwin.so, which is
 * always loaded (shared_preload_libraries) when a model runs.
 *
 * Copyright (c) 2026, digitaltwin developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef DIGITALTWIN_H
#define DIGITALTWIN_H

#include "postgres.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

/* the extension version this header comes with: 1.12 is 11200 */
#define DIGITALTWIN_VERSION_NUM 11200

/* Longest twin id accepted, in bytes. */
#define DT_TWIN_ID_MAXLEN 63

/*
 * Raise an alert for the twin and event being processed.  details may be
 * NULL.  The alert row is written, and NOTIFY digitaltwin_alerts sent, when
 * the worker commits the event; if the event fails, its alerts vanish with
 * it.  ERROR (SQLSTATE 55000) outside a model call.
 */
extern PGDLLEXPORT void digitaltwin_alert(const char *severity,
										  const char *message,
										  Jsonb *details);

/*
 * Send a message (a command, say) back to the data source of the twin and
 * event being processed: a row of digitaltwin.outbox, which gateways take
 * with digitaltwin.take_outbox().  The row is written, and
 * NOTIFY digitaltwin_outbox sent with the row's id as payload, when the
 * worker commits the event; if the event fails, its messages vanish with
 * it.  ERROR (SQLSTATE 55000) outside a model call; a NULL payload (22004),
 * one larger than digitaltwin.max_payload_size or more than 1000 messages
 * for one event (54000) fail the event.  Since version 1.6.
 */
extern PGDLLEXPORT void digitaltwin_send_to_source(Jsonb *payload);

/* True while a worker is running a model function. */
extern PGDLLEXPORT bool digitaltwin_in_model(void);

/* Name of the model, id of the twin and of the event being processed. */
extern PGDLLEXPORT const char *digitaltwin_current_model(void);
extern PGDLLEXPORT const char *digitaltwin_current_twin_id(void);
extern PGDLLEXPORT int64 digitaltwin_current_event_id(void);

/*
 * The event's kind, "event" (sent by an application), "message" (sent by
 * a model), "timer" (since 1.6) or "retry" (a dead letter queued again by
 * digitaltwin.retry_dead_letters(), since 1.7), and its event time (digitaltwin.events.event_time: the
 * application's clock, or the insert time; a message has the time of the
 * event that sent it).  Since version 1.5; NULL and DT_NOBEGIN outside a
 * model call.  digitaltwin.current_event() gives the same in SQL.
 */
extern PGDLLEXPORT const char *digitaltwin_current_event_kind(void);
extern PGDLLEXPORT TimestampTz digitaltwin_current_event_time(void);

/*
 * Timers of the twin being processed (version 1.6), as digitaltwin.set_timer()
 * and cancel_timer() in SQL.  set_timer arms, or re-arms, the twin's timer
 * called name (at most 63 bytes), due after 'after' (not negative); when it
 * falls due the model's process function is called for the twin with the
 * payload (NULL: an empty object) as the event, and the event's kind is
 * "timer".  every (NULL: once) makes it recurring.  Both take effect when
 * the event that called them is consumed; ERROR (SQLSTATE 55000) outside a
 * model call.  digitaltwin_current_timer() is the name of the timer being
 * fired, else NULL.
 */
extern PGDLLEXPORT void digitaltwin_set_timer(const char *name,
											  const Interval *after,
											  Jsonb *payload,
											  const Interval *every);
extern PGDLLEXPORT bool digitaltwin_cancel_timer(const char *name);
extern PGDLLEXPORT const char *digitaltwin_current_timer(void);

/*
 * Read a top-level numeric field of a jsonb object (for instance an event
 * payload) as double.  Returns false if the key is missing or not a number.
 */
extern PGDLLEXPORT bool digitaltwin_jsonb_get_float8(Jsonb *obj,
													 const char *key,
													 double *result);

/*
 * Binary states: a C model that keeps its state in a bytea holding a plain
 * struct can use these to go between the two.
 *
 *	  MyState *s = DT_STATE_GET(PG_GETARG_BYTEA_PP(1), MyState);
 *	  s->count++;
 *	  PG_RETURN_BYTEA_P(DT_STATE_MAKE(s, sizeof(MyState)));
 *
 * DT_STATE_GET returns a palloc'd copy, suitably aligned for any struct (the
 * bytes of a bytea are not), which the model may modify.  It raises an
 * ERROR when the state does not have the size of the struct, for instance
 * after the struct changed.
 */
static inline void *
digitaltwin_state_get(bytea *state, Size size)
{
	void	   *copy;

	if (VARSIZE_ANY_EXHDR(state) != size)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("binary twin state has %zu bytes, expected %zu",
						(Size) VARSIZE_ANY_EXHDR(state), size),
				 errhint("Did the state struct of the model change? Drop and re-create the model.")));
	copy = palloc(size);
	memcpy(copy, VARDATA_ANY(state), size);
	return copy;
}

#define DT_STATE_GET(state, type) \
	((type *) digitaltwin_state_get((state), sizeof(type)))

static inline bytea *
DT_STATE_MAKE(const void *data, Size len)
{
	bytea	   *result = (bytea *) palloc(VARHDRSZ + len);

	SET_VARSIZE(result, VARHDRSZ + len);
	memcpy(VARDATA(result), data, len);
	return result;
}

#endif							/* DIGITALTWIN_H */
