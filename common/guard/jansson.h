/*
 * Stands in front of jansson's own header for every target that links the svc library: services
 * use svc/json.h and never include jansson (style.md rule 14, docs/decisions.md 42), and this
 * makes the build say so. common/json.c, and the tests and tools that read JSON with jansson
 * themselves, opt in with SVC_USE_JANSSON (CMake: svc_use_jansson(target), which also links it).
 */
#ifndef SVC_USE_JANSSON
#error "jansson is private to common/: include svc/json.h instead (style.md rule 14)"
#endif
#include_next <jansson.h>
