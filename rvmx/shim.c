// SPDX-License-Identifier: GPL-2.0
/*
 * The few kernel facilities rvmx needs that are macros or static inlines,
 * and so have no symbol Rust could call. Logic stays in Rust.
 */
#include <linux/io.h>
#include <linux/mm.h>
#include <linux/sched.h>
#include <linux/smp.h>

/* Called from Rust only; the prototypes keep -Wmissing-prototypes quiet. */
phys_addr_t rvmx_page_to_phys(struct page *page);
phys_addr_t rvmx_virt_to_phys(const void *addr);
void rvmx_on_each_cpu(smp_call_func_t func, void *info);
void *rvmx_page_address(struct page *page);
void rvmx_local_irq_disable(void);
void rvmx_local_irq_enable(void);
void rvmx_cond_resched(void);

phys_addr_t rvmx_page_to_phys(struct page *page)
{
	return page_to_phys(page);
}

phys_addr_t rvmx_virt_to_phys(const void *addr)
{
	return virt_to_phys((void *)addr);
}

/* Runs func(info) on every online CPU with interrupts off and waits. */
void rvmx_on_each_cpu(smp_call_func_t func, void *info)
{
	on_each_cpu(func, info, 1);
}

/* A lowmem page's kernel address (the vCPU run area). */
void *rvmx_page_address(struct page *page)
{
	return page_address(page);
}

void rvmx_local_irq_disable(void)
{
	local_irq_disable();
}

void rvmx_local_irq_enable(void)
{
	local_irq_enable();
}

void rvmx_cond_resched(void)
{
	cond_resched();
}
