// SPDX-License-Identifier: GPL-2.0
/*
 * The few kernel facilities rvmx needs that are macros or static inlines,
 * and so have no symbol Rust could call. Logic stays in Rust.
 */
#include <linux/io.h>
#include <linux/mm.h>
#include <linux/smp.h>

/* Called from Rust only; the prototypes keep -Wmissing-prototypes quiet. */
phys_addr_t rvmx_page_to_phys(struct page *page);
void rvmx_on_each_cpu(smp_call_func_t func, void *info);

phys_addr_t rvmx_page_to_phys(struct page *page)
{
	return page_to_phys(page);
}

/* Runs func(info) on every online CPU with interrupts off and waits. */
void rvmx_on_each_cpu(smp_call_func_t func, void *info)
{
	on_each_cpu(func, info, 1);
}
